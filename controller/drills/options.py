"""What ``edgefleet drill offline`` takes, checked before anything starts."""

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from controller.drills.scenarios import Scenario, get_scenario
from shared.broker_url import parse_broker_url

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class DrillOptions:
    """Everything ``edgefleet drill offline`` takes."""

    scenario: str
    devices: int = 2
    duration_s: float = 60.0
    controller_url: str | None = None
    token: str | None = None
    broker_url: str = "mqtt://127.0.0.1:1883"
    mqtt_protocol: Literal["5", "3.1.1"] = "5"
    model: Path = DEFAULT_MODEL
    model_name: str = "drill"
    model_runtime: Literal["llama.cpp", "ort-genai"] = "llama.cpp"
    embedded: bool = False
    controller_cmd: str | None = None
    workdir: Path | None = None
    latency_budget_ms: float = 2000.0
    rate: float = 2.0  # requests per second per device
    flap_period_s: float = 2.0
    recovery_timeout_s: float = 90.0
    rollout_version: str | None = None  # a published version of model_name (remote fleets)
    store: bool = True  # POST the report to the controller
    keep_workdir: bool = False  # keep a work folder the drill made itself (logs, state)

    def validate(self) -> Scenario:
        scenario = get_scenario(self.scenario)
        if not 1 <= self.devices <= 50:
            raise ValueError("--devices must be between 1 and 50")
        if self.duration_s < 5:
            raise ValueError("--duration must be at least 5 seconds")
        if self.rate <= 0:
            raise ValueError("--rate must be positive")
        if not self.embedded and not self.controller_url:
            raise ValueError("give --url (and --token) of a controller, or --embedded")
        if not self.embedded and not self.token:
            raise ValueError("--token is required with --url (an operator's API token)")
        if not self.model.exists():
            raise ValueError(f"model {self.model} does not exist (give --model PATH)")
        # The agents' configs live in the work folder, and relative paths in a config are
        # taken from its folder: a relative --model would name a file that is not there.
        self.model = self.model.resolve()
        if parse_broker_url(self.broker_url).tls and self.embedded:
            raise ValueError(
                "--embedded with an mqtts:// broker: the drill's own controller has no CA "
                "the broker trusts; drill the controller whose CA the broker uses (--url and "
                "--token), or a plain mqtt:// broker"
            )
        return scenario


__all__ = ["DEFAULT_MODEL", "DrillOptions"]
