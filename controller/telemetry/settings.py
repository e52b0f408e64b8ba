"""``telemetry:`` settings: rollups, drift thresholds and the prices behind cost estimates."""

from pydantic import BaseModel, Field


class TelemetrySettings(BaseModel):
    """How telemetry is rolled up and judged (docs/telemetry.md, docs/drift.md)."""

    # How often the rollup job folds new raw records into the hourly tables.
    rollup_interval_s: float = Field(default=10.0, gt=0)
    # Raw records are rolled up only once they were received this long ago: an ingest
    # transaction still open holds ids below ones already visible, and the cursor must not
    # pass them. Longer than any ingest transaction takes.
    commit_lag_s: float = Field(default=15.0, ge=0)
    # Raw records read per rollup transaction, and transactions per job run.
    rollup_chunk: int = Field(default=2000, ge=1, le=100_000)
    rollup_max_chunks: int = Field(default=50, ge=1)
    # Drift: PSI and KS above these (with at least min_samples observations) open an alert.
    drift_psi_threshold: float = Field(default=0.2, gt=0)
    drift_ks_threshold: float = Field(default=0.1, gt=0, le=1)
    drift_min_samples: int = Field(default=100, ge=1)
    # Hysteresis: an open drift alert closes only once PSI (and KS) are below this share of
    # their thresholds, so a score hovering at a threshold does not open and close it
    # every hour.
    drift_close_ratio: float = Field(default=0.8, gt=0, le=1)
    # Window sanity against the controller's clock (the row's received_at): a window
    # starting more than window_ahead_s after it, or more than window_max_age_h before
    # it, is counted as malformed and left out (a device clock that is wrong would make
    # bogus hours and freeze alert judgement on a future hour).
    window_ahead_s: float = Field(default=3600.0, ge=0)
    window_max_age_h: float = Field(default=24 * 7, gt=0)
    # /metrics reports drift of models scored in the last this many hours, at most
    # metrics_drift_models of them (the newest scored first): labels stay bounded.
    metrics_drift_hours: int = Field(default=48, ge=1)
    metrics_drift_models: int = Field(default=100, ge=1)
    # The reference is this long a window of the model's sketches before a rollout starts.
    reference_window_h: int = Field(default=24, ge=1, le=24 * 30)
    # Retention (docs/telemetry.md, "Retention"): raw records are deleted once received this
    # long ago and rolled up (never before: the rollup cursor must have passed them). Keep
    # it longer than the longest rollout soak, whose gates read raw records.
    raw_retention_h: float = Field(default=72.0, gt=0)
    # Per-device hourly rollups (requests and health: the API shows at most 720 hours of
    # them), and fleet-wide hourly data (the fleet rollup, drift sketches and scores).
    hourly_retention_days: float = Field(default=30.0, gt=0)
    fleet_retention_days: float = Field(default=400.0, gt=0)
    # Cloud prices (USD per 1,000 tokens) behind the fleet page's cost estimates.
    cloud_price_prompt_per_1k: float = Field(default=0.0005, ge=0)
    cloud_price_completion_per_1k: float = Field(default=0.0015, ge=0)
