"""Overlapping trainings on one shared MLflow tracking server: does the champion end on the best version?

A local ``mlflow server`` (sqlite backend) stands in for a team's shared server. The demo corpus's transcripts
(120 generated dialogues) are preprocessed once; then, ``--repeats`` times, ``--processes`` trainings start at
once against the server (each its own ``train.seed``, so their gating scores differ) on a fresh registered model
name: ``spikemo train`` commands, or with ``--runner flow`` processes that each run the Prefect ``train`` flow
against one shared ``prefect server``. Per repeat: exit codes, versions registered, their gating scores and
whether the champion is the best of them. Prints one JSON line per repeat and a summary (repeats where the
champion was not the best).

    .venv/bin/python bench/overlapping_trainings.py --processes 4 --repeats 5
    .venv/bin/python bench/overlapping_trainings.py --processes 4 --repeats 5 --runner flow
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from spikemo.data.demo import DemoCorpusSettings, plan_demo_corpus, write_annotations
from spikemo.servers import free_port, model_server_environment, start_server, stop_process_group

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
SPIKEMO = [sys.executable, "-m", "spikemo.cli"]
TRAIN_FLOW = [  # the train flow on a config file plus dotted overrides (JSON); its summary as the last line
    sys.executable,
    "-c",
    "import json, sys; from flows.common import config_payload, resolve_config; from flows.train import train_flow; "
    "config = config_payload(resolve_config(sys.argv[1], json.loads(sys.argv[2]))); "
    "print(json.dumps(train_flow(config=config)))",
]


def start_tracking_server(folder: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination"]
    command += [str(folder / "artifacts")]
    url = f"http://127.0.0.1:{port}"
    return start_server(command, f"{url}/health", model_server_environment(), seconds=180), url


def start_prefect_server(folder: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1"]
    command += ["--port", str(port)]
    environment = model_server_environment(PREFECT_HOME=str(folder), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    url = f"http://127.0.0.1:{port}/api"
    return start_server(command, f"{url}/health", environment, seconds=180), url


def spikemo_command(command: str, settings: dict[str, Any]) -> list[str]:
    """``spikemo COMMAND`` on configs/demo.yaml with ``settings`` (dotted config keys)."""
    overrides = [f"--set={key}={json.dumps(value)}" for key, value in settings.items()]
    return [*SPIKEMO, command, "--config", str(DEMO_CONFIG), *overrides]


def training_command(runner: str, settings: dict[str, Any]) -> list[str]:
    """One training with ``settings``, as ``runner`` (cli or flow) starts it."""
    if runner == "flow":
        return [*TRAIN_FLOW, str(DEMO_CONFIG), json.dumps(settings)]
    return spikemo_command("train", settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--runner", choices=["cli", "flow"], default="cli", help="spikemo train, or the train flow")
    parser.add_argument("--work", type=Path, default=REPO / ".spikemo" / "bench" / "overlap")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    common = {
        "workdir": str(args.work),
        "cache": str(args.work / "cache"),
        "features.modalities": ["text"],
        "data.root": str(args.work / "corpus"),
        "train.epochs": args.epochs,
    }
    if not (args.work / "corpus" / "train_sent_emo.csv").is_file():  # the demo corpus's transcripts, no media
        write_annotations(plan_demo_corpus(DemoCorpusSettings(dialogues=120, seed=0)), args.work / "corpus")
    subprocess.run(spikemo_command("preprocess", common), check=True, stdout=subprocess.DEVNULL)
    misses = 0
    with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as servers:
        server, url = start_tracking_server(Path(folder))
        servers.callback(stop_process_group, server)
        environment = {**os.environ, "MLFLOW_TRACKING_URI": url}
        if args.runner == "flow":
            prefect, api_url = start_prefect_server(Path(folder) / "prefect")
            servers.callback(stop_process_group, prefect)
            environment["PREFECT_API_URL"] = api_url
        for repeat in range(args.repeats):
            name = f"spikemo-overlap-{args.runner}-{repeat}"
            started = time.perf_counter()
            logs = [Path(folder) / f"repeat-{repeat}-seed-{seed}.log" for seed in range(args.processes)]
            with contextlib.ExitStack() as streams:  # files, not pipes: a full pipe would stall a training
                processes = [
                    subprocess.Popen(
                        training_command(
                            args.runner, {**common, "train.seed": seed, "tracking.registered_model": name}
                        ),
                        env=environment,
                        stdout=subprocess.PIPE,
                        stderr=streams.enter_context(log.open("w")),
                        text=True,
                    )
                    for seed, log in enumerate(logs)
                ]
                answers = [process.communicate()[0].strip().splitlines() for process in processes]
            failures = [log.read_text().strip().splitlines()[-1:] for log, p in zip(logs, processes) if p.returncode]
            outputs = [json.loads(lines[-1]) if lines else {} for lines in answers]
            client = MlflowClient(url, url)
            versions = {
                str(v.version): float(v.tags["gating_dev_weighted_f1"])
                for v in client.search_model_versions(f"name='{name}'")
            }
            champion = str(client.get_model_version_by_alias(name, "champion").version)
            record = {
                "repeat": repeat,
                "exit_codes": [process.returncode for process in processes],
                "versions": len(versions),
                "gating_scores": sorted(round(score, 2) for score in versions.values()),
                "champion_score": round(versions[champion], 2),
                "champion_is_best": versions[champion] == max(versions.values()),
                "seconds": round(time.perf_counter() - started, 1),
                "aliases_reported": sorted(output.get("alias", "?") for output in outputs),
                "failures": failures,  # each failed process's last line of standard error
            }
            misses += not record["champion_is_best"]
            print(json.dumps(record), flush=True)
    print(
        json.dumps(
            {
                "benchmark": "overlapping_trainings",
                "runner": args.runner,
                "processes": args.processes,
                "repeats": args.repeats,
                "champion_not_best": misses,
            }
        )
    )


if __name__ == "__main__":
    main()
