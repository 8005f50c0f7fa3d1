"""Background processes tracked by pid files: start one detached with its log, tell whether it
still runs, stop it. The control plane's components outlive the script that started them, so
every later call finds them again through the pid files alone."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


class ComponentProcesses:
    def __init__(self, bin_dir: Path, log_dir: Path, pid_dir: Path, binaries: dict[str, str]):
        self.bin_dir, self.log_dir, self.pid_dir = bin_dir, log_dir, pid_dir
        self.binaries = binaries  # component name -> binary name, where they differ

    def binary(self, name: str) -> Path:
        return self.bin_dir / self.binaries.get(name, name)

    def pid_of(self, name: str) -> int | None:
        try:
            return int((self.pid_dir / f"{name}.pid").read_text())
        except (OSError, ValueError):
            return None

    def alive(self, name: str) -> bool:
        """True when the pid file names a live (not zombie) process of the component's binary; the
        binary's name is checked, not its path, so a process of an older pin is still found."""
        pid = self.pid_of(name)
        if pid is None:
            return False
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            return False
        return state != "Z" and Path(exe).name == self.binary(name).name

    def start(
        self, name: str, args: list[str], env: dict[str, str] | None = None, wrapper: tuple[str, ...] = ()
    ) -> None:
        """wrapper: a command that execs the binary in the end (the pid stays the component's)."""
        binary = self.binary(name)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{name}.log", "ab") as out:
            out.write(f"\n==== {time.strftime('%F %T')} {binary} {' '.join(args)}\n".encode())
            out.flush()
            # Own session: the component outlives this script and ignores the terminal's Ctrl-C.
            proc = subprocess.Popen(
                [*wrapper, str(binary), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        (self.pid_dir / f"{name}.pid").write_text(str(proc.pid))
        deadline = time.monotonic() + 10
        while wrapper and not self.alive(name) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # until the wrapper has exec'd the binary (alive() checks its name)

    def stop(self, name: str, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`; removes the pid file."""
        pid = self.pid_of(name)
        if pid is not None and self.alive(name):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.alive(name) and time.monotonic() < deadline:
                time.sleep(0.1)
            if self.alive(name):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it if this process started it
        (self.pid_dir / f"{name}.pid").unlink(missing_ok=True)

    def log_tail(self, name: str, lines: int = 40) -> str:
        try:
            text = (self.log_dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def wait(self, name: str, probe: Callable[[], bool], timeout: float) -> None:
        """Poll probe() until true; fail early, with the log's tail, when the process died."""
        deadline = time.monotonic() + timeout
        log = self.log_dir / f"{name}.log"
        while True:
            if not self.alive(name):
                raise RuntimeError(f"{name} exited during startup; {log} ends:\n{self.log_tail(name)}")
            with contextlib.suppress(OSError, ValueError):
                if probe():
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{name} not ready after {timeout:.0f}s; {log} ends:\n{self.log_tail(name)}"
                )
            time.sleep(0.2)
