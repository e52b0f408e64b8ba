"""``telemetry:`` settings: rollups, drift thresholds and the prices behind cost estimates."""

from pydantic import BaseModel, Field


class TelemetrySettings(BaseModel):
    """How telemetry is rolled up and judged (docs/telemetry.md)."""

    rollup_interval_s: float = Field(default=10.0, gt=0)
