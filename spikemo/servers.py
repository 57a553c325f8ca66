"""Child servers (``mlflow ui``, ``prefect server start``, ``mlflow models serve``) that stop with the command that
started them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

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


def start_server(command: list[str], ready_url: str, env: Mapping[str, str], seconds: float = 300) -> subprocess.Popen:
    """``command`` started in its own process group, returned once ``ready_url`` answers; stopped, and an error
    raised, when it exits first or ``seconds`` pass."""
    server = subprocess.Popen(
        command, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and server.poll() is None:
        try:
            urllib.request.urlopen(ready_url, timeout=2)
            return server
        except (urllib.error.URLError, ConnectionError):
            time.sleep(1)
    state = f"exited with {server.returncode}" if server.poll() is not None else f"gave no answer in {seconds:.0f} s"
    stop_process_group(server)
    raise RuntimeError(f"{command[0]} {command[1]}: {state} at {ready_url}")


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (another process may still take it before a server binds it)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def model_server_command(model_uri: str, host: str, port: int, workers: int = 1) -> list[str]:
    """``mlflow models serve`` of ``model_uri`` in this Python environment (no new one is built); each worker
    process answers concurrent requests from its thread pool, and each keeps its own live scorer (a conversation
    whose requests reach two workers has its turns encoded by both)."""
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    return [
        mlflow,
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]


def model_server_environment(**variables: str) -> dict[str, str]:
    """This process's environment plus ``variables``, with this Python's bin folder first on PATH:
    ``mlflow models serve`` starts ``uvicorn`` by name, which an unactivated virtualenv does not put on PATH."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, "PATH": path, **variables}
