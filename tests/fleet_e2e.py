"""A whole fleet as real processes, for update and rollout tests.

One Mosquitto, one controller (`python -m controller serve`) whose TUF repository is made
with `python -m controller keys init` and filled with `python -m controller models add`,
and agents (`python -m edge_agent run`) that serve the real SmolLM2 GGUF and update it
from the controller's `/tuf/` mirror. Checks go through the controller's HTTP API, the
agents' OpenAI-compatible endpoints, and (for the audit log and device events, which the
API does not list) the controller's SQLite file.
"""

import json
import os
import signal
import time
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from tests.conftest import MosquittoProcess, free_port, port_open, wait_for
from tests.procs import Proc, run_cli
from tests.sync_harness import ControllerProcess, agent_yaml

MODEL_NAME = "smollm2"
PASSPHRASE = "correct horse battery staple, twelve+"
TERMINAL = ("completed", "rolled_back", "aborted")
# The expected latency published with each model sets the install's smoke-inference budget
# and the rollout's p95 gate (x1.5): longer than pytest's 300 s timeout for a whole test, so
# a busy machine cannot fail an install or a gate; the gates' latency rule has its own tests.
UNTIMED_LATENCY_MS = 600_000


class FleetAgent:
    """One agent process serving the local model on its own API port and state dir."""

    def __init__(self, workdir: Path, device_id: str, config: Path, port: int) -> None:
        self.workdir = workdir
        self.device_id = device_id
        self.config = config
        self.port = port
        self.proc: Proc | None = None

    def start(self) -> None:
        self.proc = Proc(
            self.device_id,
            ["-m", "edge_agent", "run", "--config", str(self.config), "--log-level", "info"],
            self.workdir,
        )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            self.proc.stop(sig)

    def log(self) -> str:
        return self.proc.log() if self.proc is not None else ""

    def chat(self, content: str = "What is the capital of France?") -> httpx.Response:
        return httpx.post(
            f"http://127.0.0.1:{self.port}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": content}], "max_tokens": 4},
            timeout=60,
        )


class Fleet:
    """The broker, the controller (with its TUF repository) and the agents."""

    def __init__(self, workdir: Path, model: Path, device_ids: Iterable[str]) -> None:
        self.workdir = workdir
        self.model = model
        self.device_ids = list(device_ids)
        self.broker = MosquittoProcess(workdir)
        self.repo_dir = workdir / "tuf"
        self.keys_dir = workdir / "keys"
        self.passphrase_file = workdir / "passphrase"
        self.database_url = f"sqlite:///{workdir / 'controller.db'}"
        self.controller: ControllerProcess | None = None
        self.agents: dict[str, FleetAgent] = {}

    # --- bring-up -------------------------------------------------------------------------
    def start(self) -> None:
        """Broker, keys, the factory model as version 1.0, controller, then the agents."""
        self.broker.start()
        self.passphrase_file.write_text(PASSPHRASE + "\n")
        self.passphrase_file.chmod(0o600)
        self.controller = ControllerProcess(
            self.workdir,
            "controller",
            broker_url=self.broker.broker.url,
            database_url=self.database_url,
            updates={
                "repo_dir": str(self.repo_dir),
                "keys_dir": str(self.keys_dir),
                "passphrase_file": str(self.passphrase_file),
            },
            rollouts={"tick_interval_s": 0.3},
            attestation={
                "enrollment": "tofu",
                "trust_local_agent_code": True,
                "timeout_s": 60.0,
                "nonce_ttl_s": 120.0,
            },
        )
        self.cli("db", "init")
        self.cli("keys", "init")
        # The factory model is a published target too, so attestation knows its hash.
        self.publish("1.0", self.model)
        self.controller.bootstrap()
        self.controller.start()
        for device_id in self.device_ids:
            self._start_agent(device_id)
        for agent in self.agents.values():
            wait_for(partial(port_open, agent.port), 60, what=f"{agent.device_id}'s API")
        for device_id in self.device_ids:
            wait_for(
                partial(self.first_verdict, device_id),
                60,
                interval=0.3,
                what=f"{device_id}'s first attestation verdict",
            )

    def _start_agent(self, device_id: str) -> None:
        assert self.controller is not None
        port = free_port()
        base = self.controller.base_url
        config = agent_yaml(
            self.workdir,
            device_id,
            self.broker.broker.url,
            api={"host": "127.0.0.1", "port": port},
            models=[
                {
                    "name": MODEL_NAME,
                    "path": str(self.model),
                    "n_ctx": 256,
                    "n_threads": 1,
                    "max_tokens_default": 4,
                    "mlock": False,
                }
            ],
            updates={
                "enabled": True,
                "metadata_url": f"{base}/tuf/metadata/",
                "targets_url": f"{base}/tuf/targets/",
                "trusted_root": str(self.repo_dir / "metadata" / "1.root.json"),
                "health_max_tokens": 4,
                "confirm_after_s": 5.0,
            },
        )
        agent = FleetAgent(self.workdir, device_id, config, port)
        self.agents[device_id] = agent
        agent.start()

    def stop(self) -> None:
        for agent in self.agents.values():
            agent.stop(signal.SIGKILL)
        if self.controller is not None and self.controller.proc is not None:
            self.controller.proc.stop()
        self.broker.stop()

    def logs(self) -> str:
        """The tail of every process's log, for a failing test's output."""
        parts = []
        if self.controller is not None and self.controller.proc is not None:
            parts.append(f"----- controller -----\n{self.controller.proc.log()[-6000:]}")
        for agent in self.agents.values():
            parts.append(f"----- {agent.device_id} -----\n{agent.log()[-4000:]}")
        return "\n".join(parts)

    # --- the repository ---------------------------------------------------------------------
    def cli(self, *args: str) -> str:
        assert self.controller is not None
        done = run_cli(["-m", "controller", *args, "--config", str(self.controller.config)])
        assert done.returncode == 0, f"edgefleet {' '.join(args)}: {done.stderr}"
        return done.stdout

    def publish(self, version: str, artifact: Path) -> None:
        """`edgefleet models add` on the controller host: sign it as a new TUF target."""
        self.cli(
            "models", "add", str(artifact),
            "--name", MODEL_NAME, "--version", version, "--runtime", "llama.cpp",
            "--quantization", "Q4_1", "--expected-latency-ms", str(UNTIMED_LATENCY_MS),
            "--filename", f"{MODEL_NAME}-{version}.gguf",
        )  # fmt: skip

    # --- the controller's API ---------------------------------------------------------------
    def api(self) -> httpx.Client:
        assert self.controller is not None
        return self.controller.api()

    def get(self, path: str, **params: Any) -> Any:
        with self.api() as api:
            response = api.get(path, params=params)
        assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text}"
        return response.json()

    def model_version(self, version: str) -> dict[str, Any]:
        return dict(self.get(f"/api/models/{MODEL_NAME}/{version}"))

    def create_rollout(self, version: str, waves: list[str], **spec: Any) -> dict[str, Any]:
        body = {"model": MODEL_NAME, "version": version, "waves": waves, **spec}
        with self.api() as api:
            response = api.post("/api/rollouts", json=body)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def create_rollout_cli(self, *args: str) -> dict[str, Any]:
        """`edgefleet rollouts create ... --json` as an operator runs it (API token)."""
        assert self.controller is not None
        env = {
            **os.environ,
            "EDGEFLEET_URL": self.controller.base_url,
            "EDGEFLEET_TOKEN": self.controller.token,
        }
        done = run_cli(["-m", "controller", "rollouts", "create", *args, "--json"], env=env)
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout))

    def rollout(self, rollout_id: int) -> dict[str, Any]:
        return dict(self.get(f"/api/rollouts/{rollout_id}"))

    def members(self, rollout_id: int) -> dict[str, dict[str, Any]]:
        page = self.get(f"/api/rollouts/{rollout_id}/devices", limit=1000)
        return {m["device_id"]: m for m in page["data"]}

    def shadow(self, device_id: str) -> dict[str, Any]:
        return dict(self.get(f"/api/devices/{device_id}/shadow"))

    def reported_model(self, device_id: str) -> dict[str, Any]:
        return dict(self.shadow(device_id)["reported"].get("model") or {})

    def attestation(self, device_id: str) -> dict[str, Any]:
        with self.api() as api:
            response = api.get(f"/api/devices/{device_id}/attestation")
        return dict(response.json()) if response.status_code == 200 else {}

    def first_verdict(self, device_id: str) -> dict[str, Any] | None:
        results = self.attestation(device_id).get("results") or []
        return dict(results[-1]) if results else None

    def attest(self, device_id: str, timeout: float = 60) -> dict[str, Any]:
        """Challenge the device now (as an operator) and return the verdict on its answer."""
        with self.api() as api:
            issued = api.post(f"/api/devices/{device_id}/attest")
        assert issued.status_code == 202, issued.text
        nonce = issued.json()["nonce"]

        def verdict() -> dict[str, Any]:  # empty until the quote is judged
            for result in self.attestation(device_id).get("results") or []:
                if result.get("nonce") == nonce:
                    return dict(result)
            return {}

        return wait_for(verdict, timeout, interval=0.3, what=f"{device_id}'s quote for {nonce}")

    # --- driving a rollout ------------------------------------------------------------------
    def wait_rollout(
        self,
        rollout_id: int,
        statuses: Iterable[str],
        *,
        timeout: float = 150,
        drive: bool = True,
        per_device: int = 3,
    ) -> dict[str, Any]:
        """Poll the rollout until its status is one of ``statuses``. With ``drive``, every
        device that reports the rollout's target active gets a few chat requests (at most
        ``per_device``), so the wave's gates see real inference telemetry."""
        wanted = set(statuses)
        sent: dict[str, int] = {}
        deadline = time.monotonic() + timeout
        while True:
            view = self.rollout(rollout_id)
            if view["status"] in wanted:
                return view
            if view["status"] in TERMINAL:
                raise AssertionError(
                    f"rollout {rollout_id} ended {view['status']}: {view['reason']}"
                    f" (gates: {json.dumps(view['gates'])[:1500]})"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"rollout {rollout_id} still {view['status']} after {timeout}s: "
                    f"{view['reason']}"
                )
            if drive:
                self.drive(view["target"], sent, per_device)
            time.sleep(0.3)

    def drive(self, target: str, sent: dict[str, int], per_device: int) -> None:
        """One chat to each agent already serving ``target`` that has had fewer than
        ``per_device``; every answer must be a local one."""
        for device_id, agent in self.agents.items():
            if sent.get(device_id, 0) >= per_device:
                continue
            model = self.reported_model(device_id)
            if model.get("target") != target or model.get("status") != "active":
                continue
            answer = agent.chat()
            assert answer.status_code == 200, f"{device_id}: {answer.text}"
            assert answer.headers["x-edge-route"] == "local"
            sent[device_id] = sent.get(device_id, 0) + 1

    # --- the database (the audit log and device events have no list API) --------------------
    def query(self, sql: str, **params: Any) -> list[Any]:
        engine = create_engine(self.database_url)
        try:
            with engine.connect() as conn:
                return list(conn.execute(text(sql), params).all())
        finally:
            engine.dispose()

    def audit_log(self, target: str) -> list[dict[str, Any]]:
        """Audit entries about ``target`` (e.g. ``rollout:3``), oldest first."""
        rows = self.query(
            "SELECT at, actor, action, reason, detail FROM audit_entry "
            "WHERE target = :t ORDER BY at, id",
            t=target,
        )
        return [
            {
                "at": at,
                "actor": actor,
                "action": action,
                "reason": reason,
                "detail": json.loads(detail) if isinstance(detail, str) else detail,
            }
            for at, actor, action, reason, detail in rows
        ]

    def install_events(self, device_id: str) -> list[dict[str, Any]]:
        """The ``model_install`` events the device sent, in its order."""
        rows = self.query(
            "SELECT body FROM telemetry_record WHERE device_id = :d AND kind = 'event' "
            "AND name = 'model_install' ORDER BY epoch, seq",
            d=device_id,
        )
        return [json.loads(b) if isinstance(b, str) else b for (b,) in rows]


def variant(source: Path, dest: Path, tag: str) -> Path:
    """A copy of the GGUF with ``tag`` appended: llama.cpp reads tensors by offset and
    ignores trailing bytes, so it loads and answers like the original, with its own hash."""
    with source.open("rb") as src, dest.open("wb") as out:
        while chunk := src.read(1 << 20):
            out.write(chunk)
        out.write(f"\nedgefleet-test {tag}\n".encode())
    return dest


def truncated(source: Path, dest: Path, length: int = 2 * 1024 * 1024) -> Path:
    """The GGUF cut after ``length`` bytes: a valid header, no tensor data. Signed like any
    other target, it verifies; it just does not load."""
    with source.open("rb") as src:
        dest.write_bytes(src.read(length))
    return dest
