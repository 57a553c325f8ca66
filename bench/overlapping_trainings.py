"""Overlapping trainings on one shared MLflow tracking server: does the champion end on the best version?

A local ``mlflow server`` (sqlite backend) stands in for a team's shared server. The demo corpus's transcripts
(120 generated dialogues) are preprocessed once; then, ``--repeats`` times, ``--processes`` ``spikemo train``
commands start at once against the server (each its own ``train.seed``, so their gating scores differ) on a fresh
registered model name. Per repeat: exit codes, versions registered, their gating scores and whether the champion
is the best of them. Prints one JSON line per repeat and a summary (repeats where the champion was not the best).

    .venv/bin/python bench/overlapping_trainings.py --processes 4 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient

from spikemo.data.demo import DemoCorpusSettings, plan_demo_corpus, write_annotations
from spikemo.servers import free_port, model_server_environment, start_server, stop_process_group

REPO = Path(__file__).resolve().parents[1]
SPIKEMO = [sys.executable, "-m", "spikemo.cli"]


def start_tracking_server(folder: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination"]
    command += [str(folder / "artifacts")]
    url = f"http://127.0.0.1:{port}"
    return start_server(command, f"{url}/health", model_server_environment(), seconds=180), url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=REPO / ".spikemo" / "bench" / "overlap")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    common = ["--config", str(REPO / "configs" / "demo.yaml"), "--workdir", str(args.work)]
    common += ["--cache", str(args.work / "cache"), "--set", "features.modalities=[text]"]
    common += ["--set", f"data.root={args.work / 'corpus'}", "--set", f"train.epochs={args.epochs}"]
    if not (args.work / "corpus" / "train_sent_emo.csv").is_file():  # the demo corpus's transcripts, no media
        write_annotations(plan_demo_corpus(DemoCorpusSettings(dialogues=120, seed=0)), args.work / "corpus")
    subprocess.run([*SPIKEMO, "preprocess", *common], check=True, stdout=subprocess.DEVNULL)
    misses = 0
    with tempfile.TemporaryDirectory() as folder:
        server, url = start_tracking_server(Path(folder))
        environment = {**os.environ, "MLFLOW_TRACKING_URI": url}
        try:
            for repeat in range(args.repeats):
                name = f"spikemo-overlap-{repeat}"
                started = time.perf_counter()
                processes = [
                    subprocess.Popen(
                        [
                            *SPIKEMO,
                            "train",
                            *common,
                            "--set",
                            f"train.seed={seed}",
                            "--set",
                            f"tracking.registered_model={name}",
                        ],
                        env=environment,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL,
                        text=True,
                    )
                    for seed in range(args.processes)
                ]
                outputs = [json.loads(process.communicate()[0].strip().splitlines()[-1]) for process in processes]
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
                }
                misses += not record["champion_is_best"]
                print(json.dumps(record), flush=True)
        finally:
            stop_process_group(server)
    print(
        json.dumps(
            {
                "benchmark": "overlapping_trainings",
                "processes": args.processes,
                "repeats": args.repeats,
                "champion_not_best": misses,
            }
        )
    )


if __name__ == "__main__":
    main()
