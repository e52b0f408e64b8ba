"""Real processes for end-to-end tests: started with logs to files, always cleaned up."""

import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class Proc:
    def __init__(self, name: str, args: list[str], log_dir: Path, stdin: str | None = None) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            [sys.executable, *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        )
        if stdin is not None and self.popen.stdin is not None:
            self.popen.stdin.write(stdin.encode())
            self.popen.stdin.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()
        return self.popen.returncode


@contextmanager
def processes(log_dir: Path) -> Iterator[list[Proc]]:
    """Collects started processes; kills what is left and prints their logs on failure."""
    started: list[Proc] = []
    try:
        yield started
    except BaseException:
        for proc in started:
            print(f"----- {proc.name} log -----\n{proc.log()[-4000:]}")
        raise
    finally:
        for proc in started:
            proc.stop(signal.SIGKILL, 5)


def run_cli(
    args: list[str], stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
