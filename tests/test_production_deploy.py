"""The production guide (docs/production.md) and what it ships: the systemd unit passes
``systemd-analyze``, the alert rules are a Prometheus rule file over metrics the controller
serves, and the guide's own config and commands, run in order on PostgreSQL and a Mosquitto
over mutual TLS, give a controller that is healthy, lets its first users in and whose backup
restores."""

import getpass
import re
import secrets
import shlex
import shutil
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from controller.db import make_engine
from controller.migrations import MIGRATIONS
from controller.rollouts.engine import Status
from tests.conftest import free_port, mosquitto_binary, port_open, wait_for
from tests.procs import Proc, processes, run_cli

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "systemd" / "edgefleet-controller.service"
RULES = ROOT / "deploy" / "prometheus" / "edgefleet-alerts.yml"
GUIDE = ROOT / "docs" / "production.md"
EXEC_START = "ExecStart=/opt/edgefleet/venv/bin/edgefleet serve -c /etc/edgefleet/controller.yaml"
# Series that come from Prometheus itself (up) and the blackbox exporter (probe_success).
FOREIGN_SERIES = {"up", "probe_success"}
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail("systemd-analyze is not installed (scripts/dev test installs systemd)")
    return found


def unit_copy(tmp_path: Path, text: str | None = None) -> Path:
    """The unit with ExecStart pointing at this environment's ``edgefleet`` (verify wants the
    binary to exist), in a folder of its own."""
    edgefleet = Path(sys.executable).parent / "edgefleet"
    assert edgefleet.is_file(), f"{edgefleet} missing: is edgefleet installed in this venv?"
    original = UNIT.read_text() if text is None else text
    assert EXEC_START in original
    copy = tmp_path / UNIT.name
    copy.write_text(original.replace("/opt/edgefleet/venv/bin/edgefleet", str(edgefleet)))
    return copy


def verify_problems(unit: Path) -> list[str]:
    """What ``systemd-analyze verify`` says about ``unit`` (warnings included: an unknown or
    misspelt key is only a warning, and would silently drop a hardening option)."""
    done = subprocess.run(
        [systemd_analyze(), "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    said = [line for line in (done.stdout + done.stderr).splitlines() if unit.stem in line]
    return said if done.returncode == 0 else [f"exit {done.returncode}", *said]


def test_unit_file_verifies(tmp_path: Path) -> None:
    """systemd-analyze verify accepts the unit without a warning, runs the documented
    ExecStart as the edgefleet user, and would report a misspelt hardening option."""
    text = UNIT.read_text()
    assert verify_problems(unit_copy(tmp_path)) == []
    assert "\nUser=edgefleet\n" in text
    for option in (
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "Restart=on-failure",
        "EnvironmentFile=-/etc/edgefleet/controller.env",
    ):
        assert f"\n{option}\n" in text, option
    misspelt = tmp_path / "misspelt"
    misspelt.mkdir()
    broken = unit_copy(misspelt, text.replace("NoNewPrivileges=", "NoNewPrivilege="))
    assert any("NoNewPrivilege" in line for line in verify_problems(broken))


def test_unit_file_exposure_is_low(tmp_path: Path) -> None:
    """systemd-analyze security rates the unit's exposure at 2.5 or less (of 10)."""
    done = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", "--threshold=25",
         str(unit_copy(tmp_path))],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    assert isinstance(document, dict) and set(document) == {"groups"}
    found = []
    for group in document["groups"]:
        assert set(group) == {"name", "rules"} and group["rules"], group.get("name")
        found += group["rules"]
    return found


def test_alert_rules_have_the_rule_file_shape() -> None:
    """Every rule is an alert with a PromQL expression, an optional duration, a severity
    and a summary; names are unique."""
    found = rules()
    names = [rule["alert"] for rule in found]
    assert len(names) == len(set(names)) and len(names) >= 10
    for rule in found:
        name = rule["alert"]
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, name
        assert re.fullmatch(r"Edgefleet[A-Za-z]+", name), name
        assert isinstance(rule["expr"], str) and rule["expr"].strip(), name
        expr = rule["expr"]
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), name
        if "for" in rule:
            assert re.fullmatch(r"\d+[smhd]", rule["for"]), name
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert rule["annotations"]["summary"], name


def selectors(expr: str) -> list[tuple[str, dict[str, str]]]:
    """The series an expression reads: (metric name, its equality matchers)."""
    text = re.sub(r"\[[^\]]*\]", "", expr)  # range durations
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", text)  # grouping labels
    found = []
    for match in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^}]*\})?\s*(\()?", text):
        name, matchers, call = match.groups()
        if call or name in PROMQL_WORDS:
            continue  # a function or an operator
        labels = dict(re.findall(r'(\w+)\s*=\s*"([^"]*)"', matchers or ""))
        found.append((name, labels))
    return found


def served(text: str) -> dict[str, dict[str, set[str]]]:
    """Series names in a /metrics text, each with its labels and their values (a family
    with no sample yet is named by its TYPE line; a counter's series ends in _total)."""
    series: dict[str, dict[str, set[str]]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            total = kind == "counter" and not name.endswith("_total")
            series.setdefault(f"{name}_total" if total else name, defaultdict(set))
        elif line and not line.startswith("#"):
            name = re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line)
            assert name, line
            labels = series.setdefault(name.group(0), defaultdict(set))
            for label, value in re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]):
                labels[label].add(value)
    return series


# --- the guide, step by step -------------------------------------------------------------
def guide_yaml(key: str) -> dict[str, Any]:
    """The guide's first YAML block with ``key`` at its top."""
    for language, body in FENCE.findall(GUIDE.read_text()):
        if language == "yaml" and re.search(rf"^{key}:", body, re.M):
            loaded = yaml.safe_load(body)
            assert isinstance(loaded, dict)
            return loaded
    raise AssertionError(f"docs/production.md has no yaml block with {key}:")


def guide_commands() -> list[str]:
    """The ``edgefleet`` lines of the guide's shell blocks, continuations joined, in order."""
    commands = []
    for language, body in FENCE.findall(GUIDE.read_text()):
        if language != "sh":
            continue
        for line in body.replace("\\\n", " ").splitlines():
            if line.startswith("edgefleet "):
                commands.append(" ".join(line.split("#")[0].split()))
    return commands


class Host:
    """The guide's folders under ``tmp``: /etc/edgefleet and /var/lib/edgefleet."""

    def __init__(self, tmp: Path, database_url: str) -> None:
        self.etc = tmp / "etc"
        self.state = tmp / "state"
        self.etc.mkdir()
        self.state.mkdir(mode=0o711)
        self.mqtt_port = free_port()
        self.http_port = free_port()
        self.database_url = database_url
        self.passphrase = secrets.token_urlsafe(24)

    def local(self, text: str) -> str:
        out = text.replace("/var/lib/edgefleet", str(self.state))
        out = out.replace("/etc/edgefleet", str(self.etc))
        out = out.replace("8883", str(self.mqtt_port)).replace("0.0.0.0", "127.0.0.1")
        assert "/var/lib/" not in out and "/etc/edgefleet" not in out, out
        return out

    def write_config(self) -> Path:
        config = guide_yaml("environment")
        assert config["environment"] == "production"
        local: dict[str, Any] = yaml.safe_load(self.local(yaml.safe_dump(config)))
        local["database_url"] = self.database_url
        local["http_port"] = self.http_port
        (self.etc / "key-passphrase").write_text(self.passphrase + "\n")
        (self.etc / "key-passphrase").chmod(0o640)
        path = self.etc / "controller.yaml"
        path.write_text(yaml.safe_dump(local))
        return path

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        words = shlex.split(self.local(command))
        assert words[0] == "edgefleet"
        done = run_cli(["-m", "controller", *words[1:]])
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        return done


@contextmanager
def mosquitto_running(host: Host) -> Iterator[None]:
    """Mosquitto on the config the guide's `broker mosquitto-config` wrote, as this user (so
    it reads pytest's folders; the guide gives Debian's mosquitto user ACLs instead)."""
    conf = host.state / "mosquitto" / "mosquitto.conf"
    conf.write_text(conf.read_text() + f"user {getpass.getuser()}\nlog_dest stderr\n")
    log = host.state / "mosquitto.log"
    with log.open("wb") as out:
        broker = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=out, stderr=out)
    try:
        wait_for(lambda: port_open(host.mqtt_port) or broker.poll() is not None, 10)
        assert broker.poll() is None, log.read_text()
        yield
    except BaseException:
        print(f"----- mosquitto log -----\n{log.read_text()[-3000:]}")
        raise
    finally:
        broker.terminate()
        broker.wait(10)


def pg_tool(name: str) -> str:
    from tests.pg_cluster import ClusterError, server_bin_dir

    try:  # the tools of the server's version: an older pg_dump refuses a newer server
        tool = server_bin_dir() / name
        if tool.exists():
            return str(tool)
    except ClusterError:
        pass
    found = shutil.which(name)
    assert found, f"{name} is not installed (Debian's postgresql-client)"
    return found


@dataclass
class Deployed:
    """The controller the guide's steps set up, running."""

    host: Host
    base: str
    server: Proc
    scrape_token: str
    database_url: str

    def get(self, path: str) -> httpx.Response:
        auth = {"Authorization": f"Bearer {self.scrape_token}"}
        return httpx.get(f"{self.base}{path}", headers=auth, timeout=10)


def healthz(server: Proc, base: str) -> dict[str, Any] | None:
    if server.popen.poll() is not None:
        raise AssertionError(f"edgefleet serve exited: {server.log()[-3000:]}")
    try:
        answer = httpx.get(f"{base}/healthz", timeout=2)
    except httpx.HTTPError:
        return None
    body: dict[str, Any] = answer.json()
    return body if answer.status_code == 200 else None


@pytest.fixture(scope="module")
def guide(tmp_path_factory: pytest.TempPathFactory, postgres_server: str) -> Iterator[Deployed]:
    """docs/production.md followed on this machine: its controller.yaml (the folders moved
    under a temp folder, a database of its own on the test server, free ports), its
    ``edgefleet`` commands in order, Mosquitto on the config they wrote, `edgefleet serve`."""
    import psycopg

    tmp = tmp_path_factory.mktemp("production")
    name = f"edgefleet_guide_{secrets.token_hex(6)}"
    database_url = f"{postgres_server.rsplit('/', 1)[0]}/{name}"
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        host = Host(tmp, database_url)
        config = host.write_config()
        commands = guide_commands()
        assert [c.split(" -c")[0].split(" --")[0] for c in commands] == [
            "edgefleet keys init", "edgefleet pki init", "edgefleet keys status",
            "edgefleet broker mosquitto-config", "edgefleet admin create",
            "edgefleet admin create", "edgefleet token create",
        ]  # fmt: skip
        outputs = [host.run(command).stdout for command in commands]
        scrape_token = outputs[-1].strip()
        with mosquitto_running(host), processes(tmp) as procs:
            server = Proc("serve", ["-m", "controller", "serve", "-c", str(config)], tmp)
            procs.append(server)
            base = f"http://127.0.0.1:{host.http_port}"
            wait_for(lambda: healthz(server, base), 60, interval=0.5, what="/healthz ok")
            yield Deployed(host, base, server, scrape_token, database_url)
    finally:
        with psycopg.connect(postgres_server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.e2e
@pytest.mark.postgres
def test_the_guide_gives_a_healthy_controller(guide: Deployed) -> None:
    """Following the guide (production environment, PostgreSQL, Mosquitto over mutual TLS
    with the controller's own certificate) ends in a controller whose /healthz is ok, that
    says where it serves, and whose scrape token is a viewer's; the keys, the root metadata
    devices are provisioned with and the controller's client key are where the guide says."""
    health = healthz(guide.server, guide.base)
    assert health is not None and health["status"] == "ok", health
    assert health["database"] is True and health["broker"] is True
    assert health["workers_down"] == []
    assert f"serving {guide.base}" in guide.server.log()
    assert guide.get("/api/me").json()["role"] == "viewer"
    state = guide.host.state
    assert (state / "tuf" / "metadata" / "1.root.json").is_file()
    assert list((state / "keys").glob("timestamp.*.pem"))
    assert (state / "pki" / "ca.key").is_file()
    assert (state / "controller-tls" / "edgefleet-controller.key").is_file()


@pytest.mark.e2e
@pytest.mark.postgres
def test_alert_rules_read_metrics_the_controller_serves(guide: Deployed) -> None:
    """Every edgefleet_* series an alert reads is in the guide's controller's /metrics
    (scraped with the guide's viewer token), with the labels it matches on (device states
    and rollout statuses that exist); the other series are Prometheus's `up` and the
    blackbox probe, of jobs the guide's scrape config names."""
    response = guide.get("/metrics")
    assert response.status_code == 200
    metrics = served(response.text)
    jobs = {job["job_name"] for job in guide_yaml("scrape_configs")["scrape_configs"]}
    statuses = {str(s) for s in Status}
    for rule in rules():
        for name, labels in selectors(rule["expr"]):
            where = f"{rule['alert']}: {name}{labels or ''}"
            if name in FOREIGN_SERIES:
                assert labels.get("job") in jobs, where
                continue
            assert name in metrics, f"{where} is not served (served: {sorted(metrics)})"
            for label, value in labels.items():
                if label == "status":
                    assert value in statuses, where
                elif metrics[name]:  # a family with samples shows its labels
                    assert value in metrics[name][label], where
    assert metrics["edgefleet_worker_up"]["worker"] >= {"ingest-writer", "tuf-refresh"}


@pytest.mark.e2e
@pytest.mark.postgres
def test_a_backup_restores(guide: Deployed, postgres_server: str, tmp_path: Path) -> None:
    """The guide's pg_dump of the running controller's database, restored into a new
    database with pg_restore --no-owner, holds its users and every migration step."""
    import psycopg

    dump = tmp_path / "edgefleet.dump"
    done = subprocess.run(
        [pg_tool("pg_dump"), "--format=custom", f"--file={dump}", guide.database_url],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    restored = f"{guide.database_url}_restored"
    name = restored.rsplit("/", 1)[1]
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            done = subprocess.run(
                [pg_tool("pg_restore"), "--no-owner", f"--dbname={restored}", str(dump)],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            engine = make_engine(restored)
            try:
                with engine.connect() as conn:
                    users = {r[0] for r in conn.exec_driver_sql('SELECT username FROM "user"')}
                    steps = {r[0] for r in conn.exec_driver_sql("SELECT id FROM schema_migration")}
            finally:
                engine.dispose()
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    assert users == {"alice", "prometheus"}
    assert steps == {m.id for m in MIGRATIONS}
