"""`nefos serve` in child processes of their own (crash and fan-out tests)."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.conftest import ADMIN_PASSWORD, GENEROUS_LIMITS, free_port

# Looked up before any fork; Linux only (elsewhere children are not tied to us).
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
PR_SET_PDEATHSIG = 1


def dies_with_us() -> Callable[[], None]:
    """A ``preexec_fn`` that kills the child when the test process ends, however it
    ends: a pytest worker killed by a timeout runs no fixture's teardown, and
    servers left running slow every later run on the machine. Linux sends the
    signal when the thread that started the child ends: tests start them from the
    worker's main thread."""
    parent = os.getpid()

    def preexec() -> None:
        if _prctl is None:
            return
        _prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
        if os.getppid() != parent:  # the parent ended before the line above
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def serve_env(database_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a test `nefos serve`: this process's, minus its NEFOS_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEFOS_")}
    env.update(
        {
            "NEFOS_DATABASE_URL": database_url,
            "NEFOS_DATA_DIR": str(data_dir),
            "NEFOS_HOST": "127.0.0.1",
            "NEFOS_PORT": str(free_port()),
            "NEFOS_SECRET_KEY": "test-secret-key-that-is-long-enough-for-hs256",
            "NEFOS_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "NEFOS_REGISTER_LOCAL_HOSTS": "false",
            "NEFOS_LOG_LEVEL": "warning",
            "NEFOS_OPERATION_POLL_INTERVAL": "0.2",
            "NEFOS_ARGON2_TIME_COST": "2",
            "NEFOS_ARGON2_MEMORY_KIB": "19456",
            "NEFOS_ARGON2_PARALLELISM": "1",
            **{f"NEFOS_{k.upper()}": v for k, v in GENEROUS_LIMITS.items()},
            **extra,
        }
    )
    return env


class Server:
    """`nefos serve` in a child process of its own."""

    def __init__(
        self, env: dict[str, str], cwd: Path, log: Path, *args: str, role: str | None = None
    ) -> None:
        """``args``: more of ``nefos serve``'s options; ``role``: its ``--role``."""
        self.env, self.cwd, self.log = env, cwd, log
        self.args = [*args, *(["--role", role] if role else [])]
        self.url = f"http://127.0.0.1:{env['NEFOS_PORT']}"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        nefos = Path(sys.executable).parent / "nefos"
        cmd = (
            [str(nefos), "serve"]
            if nefos.exists()
            else [sys.executable, "-c", "from nefos.cli.main import main; main()", "serve"]
        )
        return [*cmd, *self.args]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        cmd = self.command()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - our own CLI
                cmd,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=dies_with_us(),  # noqa: PLW1509 - set before the exec, main thread
            )
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"nefos serve exited:\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"nefos serve did not answer:\n{self.tail()}")
            time.sleep(0.1)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@contextmanager
def server(
    env: dict[str, str], cwd: Path, log: Path, *args: str, role: str | None = None
) -> Iterator[Server]:
    s = Server(env, cwd, log, *args, role=role)
    try:
        s.start()
        yield s
    finally:
        s.kill(signal.SIGTERM)
