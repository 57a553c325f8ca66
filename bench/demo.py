"""Wall time of `spikemo demo` in a fresh work directory and cache (corpus generation included), then of a
second run that reuses everything. Prints one JSON line; the goal is ≤ 3 minutes for the first run on 2 cores.

    python bench/demo.py [--dialogues N]   (default: the demo's own corpus, flows/demo.py's DEMO_RUN_CORPUS)
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

from flows.demo import DEMO_RUN_CORPUS


def run_demo(workdir: Path, dialogues: int | None) -> tuple[float, dict]:
    started = time.perf_counter()
    size = ["--dialogues", str(dialogues)] if dialogues else []
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "spikemo.cli",
            "demo",
            "--workdir",
            str(workdir),
            "--cache",
            str(workdir / "cache"),
            *size,
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PREFECT_HOME": str(workdir / "prefect")},
    )
    return time.perf_counter() - started, json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialogues", type=int, help="dialogues to generate (default: the demo's own)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="spikemo-demo-bench-") as scratch:
        first_seconds, first = run_demo(Path(scratch), args.dialogues)
        second_seconds, _ = run_demo(Path(scratch), args.dialogues)
    print(
        json.dumps(
            {
                "benchmark": "demo",
                "dialogues": args.dialogues or DEMO_RUN_CORPUS["dialogues"],
                "utterances": first["preprocess"]["utterances"],
                "first_run_seconds": round(first_seconds, 1),
                "second_run_seconds": round(second_seconds, 1),
                "second_over_first": round(second_seconds / first_seconds, 3),
                "goal_first_run_seconds": 180,
                "test_weighted_f1": first["test_weighted_f1"],
                "baseline_test_weighted_f1": first["baseline_test_weighted_f1"],  # the run's own linear probe
                "test_weighted_f1_minus_baseline": first["test_weighted_f1_minus_baseline"],  # difference, 95% interval
                "load_average": os.getloadavg()[0],
            }
        )
    )


if __name__ == "__main__":
    main()
