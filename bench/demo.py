"""Wall time of `spikemo demo` in a fresh work directory and cache (corpus generation included), then of a
second run that reuses everything; with ``--fresh-clone`` first `make demo` as a newcomer runs it: a `git clone`
of HEAD, no `.venv`, an empty uv cache, no virtualenv active (install included; the goal is ≤ 3 minutes on 2
cores). Prints one JSON line.

    python bench/demo.py [--dialogues N] [--fresh-clone]   (default: flows/demo.py's DEMO_RUN_CORPUS)
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

REPO = Path(__file__).resolve().parents[1]


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


def fresh_clone_make_demo(scratch: Path) -> float:
    clone = scratch / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    environment = {key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV", "PREFECT_HOME")}
    outside_venv = [part for part in os.environ["PATH"].split(os.pathsep) if not part.startswith(sys.prefix)]
    environment.update(PATH=os.pathsep.join(outside_venv), UV_CACHE_DIR=str(scratch / "uv-cache"))
    started = time.perf_counter()
    subprocess.run(["make", "demo"], cwd=clone, env=environment, capture_output=True, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialogues", type=int, help="dialogues to generate (default: the demo's own)")
    parser.add_argument("--fresh-clone", action="store_true", help="first time `make demo` in a fresh clone")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="spikemo-demo-bench-") as scratch:
        fresh_clone_seconds = fresh_clone_make_demo(Path(scratch)) if args.fresh_clone else None
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
                **(
                    {
                        "fresh_clone_make_demo_seconds": round(fresh_clone_seconds, 1),
                        "fresh_clone_over_first_run": round(fresh_clone_seconds / first_seconds, 3),  # install's share
                    }
                    if fresh_clone_seconds is not None
                    else {}
                ),
                "goal_fresh_clone_seconds": 180,
                "test_weighted_f1": first["test_weighted_f1"],
                "baseline_test_weighted_f1": first["baseline_test_weighted_f1"],  # the run's own linear probe
                "test_weighted_f1_minus_baseline": first["test_weighted_f1_minus_baseline"],  # difference, 95% interval
                "load_average": os.getloadavg()[0],
            }
        )
    )


if __name__ == "__main__":
    main()
