"""Child servers (``mlflow ui``, ``prefect server start``) that stop with the command that started them."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping

STOP_GRACE_SECONDS = 15.0


class _Terminated(Exception):
    """SIGTERM reached the parent."""


def run_until_stopped(command: list[str], env: Mapping[str, str] | None = None) -> int:
    """Run ``command`` in its own process group until it exits or this process gets Ctrl-C or SIGTERM; then
    the whole group (the server and whatever it spawned) gets SIGTERM, and SIGKILL after a grace period."""
    child = subprocess.Popen(command, env=env, start_new_session=True)

    def terminated(signum: int, frame: object) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        return child.wait()
    except (KeyboardInterrupt, _Terminated):
        return stop_process_group(child)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if child.poll() is None:
            stop_process_group(child)


def stop_process_group(child: subprocess.Popen) -> int:
    """SIGTERM to ``child``'s process group, SIGKILL if it is still there after ``STOP_GRACE_SECONDS``."""
    for stop_signal in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(child.pid, stop_signal)
        except ProcessLookupError:
            break
        try:
            return child.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            continue
    return child.wait()
