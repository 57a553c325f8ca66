"""Live scoring latency: the newest turn of a 20-turn MELD dialogue, text encoding included, on CPU.

For MELD dialogues of at least 20 turns (cut to their first 20; dev's, then train's), each turn k is scored as it
arrives (the request holds turns 0..k), three ways in the same invocation:
- ``incremental``: one ``IncrementalScorer`` kept across requests (earlier turns' encodings reused);
- ``rescore_in_memory``: another scorer whose memory is emptied before each request (every turn of the
  conversation so far encoded again, the encoder already loaded);
- ``rescore_predict_frame``: ``Predictor.predict_frame`` on the conversation so far (what the pyfunc and
  ``spikemo predict`` run per request without ``newest``: ingest, feature cache, model).
The model is configs/meld-causal.yaml's (MiniLM's 4th layer, text only) with freshly initialised weights:
latency does not depend on their values. Prints p50/p95 per way (all turns, and the 20th turn alone) and
the ratios of the rescoring ways to the incremental one.

``--part served``: the same model saved as the pyfunc and served by ``mlflow models serve`` (one worker: the
scoring server answers requests from a thread pool). ``--clients`` callers at once, each replaying its own
dialogue turn by turn over HTTP, first with the ``newest`` parameter (1: only the new turn is encoded and
answered), then without (the server re-scores the whole conversation so far), and once more with one caller
alone (the scorer answers the requests that wait together as one group, one group at a time). After one warm-up
round of every caller, each way is replayed ``--rounds`` times on conversation ids the server has not seen. Prints
new turns answered per second and p50/p95 request latency per way. ``--workers 2 --threads 1``: two scoring server
processes of one thread each (each with its own memo of encodings).

    .venv/bin/python bench/incremental.py
    .venv/bin/python bench/incremental.py --part served --clients 8
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch

from spikemo.bundle import EncoderSpec, ModelSpec, save_bundle
from spikemo.config import load_config
from spikemo.features.base import build_encoder
from spikemo.incremental import IncrementalScorer
from spikemo.model.ensemble import build_model
from spikemo.predict import Predictor
from spikemo.servers import (
    free_port,
    model_server_command,
    model_server_environment,
    start_server,
    stop_process_group,
)
from spikemo.tracking import INPUT_EXAMPLE, PYFUNC_MODEL_FILE, prediction_signature

REPO = Path(__file__).resolve().parents[1]
MELD = REPO.parent / "shared" / "data" / "meld"
TURNS = 20


def causal_predictor(config_path: Path) -> Predictor:
    config = load_config(config_path, {"features.modalities": ["text"]})
    encoder = build_encoder("text", config.features)
    spec = ModelSpec(
        dataset="meld",
        labels=["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"],
        model=config.model,
        features=config.features,
        encoders={"text": EncoderSpec(encoder=config.features.text, fingerprint=encoder.fingerprint, dim=encoder.dim)},
    )
    torch.manual_seed(0)
    return Predictor(build_model(spec.model, spec.input_dims, len(spec.labels)), spec)


def long_dialogues(meld: Path, limit: int) -> list[pd.DataFrame]:
    """The first ``limit`` MELD dialogues of 20+ turns, cut to 20: dev's, then train's (the model's weights are
    random)."""
    columns = {
        "Dialogue_ID": "dialogue_id",
        "Utterance_ID": "utterance_index",
        "Speaker": "speaker",
        "Utterance": "text",
    }
    dialogues = []
    for split in ("dev", "train"):
        utterances = pd.read_csv(
            meld / f"{split}_sent_emo.csv", dtype={"Dialogue_ID": str}, keep_default_na=False
        ).rename(columns=columns)
        utterances["dialogue_id"] = f"{split}-" + utterances["dialogue_id"]
        dialogues += [
            turns.sort_values("utterance_index").head(TURNS)
            for _, turns in utterances.groupby("dialogue_id")
            if len(turns) >= TURNS
        ]
    return [turns[list(columns.values())].reset_index(drop=True) for turns in dialogues[:limit]]


def timed(score: Any, dialogue: pd.DataFrame) -> list[float]:
    """Milliseconds to answer each turn of ``dialogue`` as it arrives."""
    spent = []
    for k in range(len(dialogue)):
        started = time.perf_counter()
        score(dialogue.iloc[: k + 1])
        spent.append(1000 * (time.perf_counter() - started))
    return spent


def request(turns: pd.DataFrame) -> dict[str, Any]:
    return {"dialogue_id": str(turns["dialogue_id"].iloc[0]), "turns": turns[["speaker", "text"]].to_dict("records")}


def latency_summary(spent_ms: np.ndarray) -> dict[str, float]:
    return {
        "p50_ms": round(float(np.percentile(spent_ms, 50)), 2),
        "p95_ms": round(float(np.percentile(spent_ms, 95)), 2),
    }


def in_process(predictor: Predictor, dialogues: list[pd.DataFrame]) -> dict[str, Any]:
    scorer, anchor = (
        IncrementalScorer(predictor),
        IncrementalScorer(predictor),
    )  # one loaded encoder each, as a server holds
    for warm_up in (scorer, anchor):
        warm_up.score(request(dialogues[0].head(2)))
        warm_up.forget()

    def rescore(turns: pd.DataFrame) -> None:
        anchor.forget()
        anchor.score(request(turns))

    ways = {"incremental": [], "rescore_in_memory": [], "rescore_predict_frame": []}
    for dialogue in dialogues:
        ways["incremental"].append(timed(lambda turns: scorer.score(request(turns)), dialogue))
        ways["rescore_in_memory"].append(timed(rescore, dialogue))
        ways["rescore_predict_frame"].append(timed(predictor.predict_frame, dialogue))
    summary: dict[str, Any] = {}
    for way, runs in ways.items():
        spent = np.asarray(runs)  # [dialogues, turns]
        summary[way] = {
            **latency_summary(spent),
            **{f"turn20_{k}": v for k, v in latency_summary(spent[:, -1]).items()},
        }
    fastest = summary["incremental"]
    for way in ("rescore_in_memory", "rescore_predict_frame"):
        summary[f"{way}_over_incremental_turn20_p95"] = round(
            summary[way]["turn20_p95_ms"] / fastest["turn20_p95_ms"], 2
        )
    return summary


def saved_pyfunc(predictor: Predictor, folder: Path) -> Path:
    """The model as ``train`` logs it: the bundle as the pyfunc's artifact, its code, the signature with params."""
    bundle = save_bundle(predictor.model, predictor.spec, folder / "bundle")
    mlflow.pyfunc.save_model(
        folder / "pyfunc",
        python_model=str(PYFUNC_MODEL_FILE),
        artifacts={"bundle": str(bundle)},
        code_paths=[str(REPO / "spikemo")],
        signature=prediction_signature(predictor.spec.labels),
        input_example=INPUT_EXAMPLE,
    )
    return folder / "pyfunc"


def start_model_server(model: Path, port: int, threads: int, workers: int) -> subprocess.Popen:
    command = model_server_command(str(model), "127.0.0.1", port, workers)
    environment = model_server_environment(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return start_server(command, f"http://127.0.0.1:{port}/ping", environment)


def post(url: str, turns: pd.DataFrame, newest: int) -> float:
    """Milliseconds for one answered request; a non-200 answer raises."""
    body = {"dataframe_split": turns.to_dict("split"), "params": {"newest": newest}}
    del body["dataframe_split"]["index"]
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=300) as answer:
        answer.read()
    return 1000 * (time.perf_counter() - started)


def replay_at_once(url: str, dialogues: list[pd.DataFrame], newest: int, rounds: int, prefix: str) -> dict[str, Any]:
    """Every dialogue replayed turn by turn by its own client, all clients at once; ``rounds`` times, each round
    on conversation ids the server has not seen."""

    def replay(dialogue: pd.DataFrame) -> list[float]:
        return [post(url, dialogue.iloc[: k + 1], newest) for k in range(len(dialogue))]

    started = time.perf_counter()
    spent = []
    with ThreadPoolExecutor(max_workers=len(dialogues)) as pool:
        for round_index in range(rounds):
            spent += list(pool.map(replay, renamed(dialogues, f"{prefix}{round_index}")))  # [clients, turns] each
    seconds = time.perf_counter() - started
    spent_ms = np.asarray(spent)
    return {
        "clients": len(dialogues),
        "rounds": rounds,
        "new_turns_per_s": round(spent_ms.size / seconds, 1),
        **latency_summary(spent_ms),
    }


def renamed(dialogues: list[pd.DataFrame], prefix: str) -> list[pd.DataFrame]:
    return [dialogue.assign(dialogue_id=f"{prefix}-{dialogue['dialogue_id'].iloc[0]}") for dialogue in dialogues]


def served(
    predictor: Predictor, dialogues: list[pd.DataFrame], clients: int, threads: int, rounds: int, workers: int
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        port = free_port()
        server = start_model_server(saved_pyfunc(predictor, Path(folder)), port, threads, workers)
        url = f"http://127.0.0.1:{port}/invocations"
        try:
            replay_at_once(url, dialogues[:clients], newest=1, rounds=1, prefix="warm-up")  # warms every server thread
            summary = {
                "incremental": replay_at_once(url, dialogues[:clients], newest=1, rounds=rounds, prefix="many"),
                "rescore": replay_at_once(url, dialogues[:clients], newest=0, rounds=rounds, prefix="whole"),
                "incremental_one_client": replay_at_once(url, dialogues[:1], newest=1, rounds=rounds, prefix="alone"),
            }
        finally:
            stop_process_group(server)
    incremental = summary["incremental"]
    summary["incremental_over_rescore_turns_per_s"] = round(
        incremental["new_turns_per_s"] / summary["rescore"]["new_turns_per_s"], 2
    )
    summary["incremental_over_one_client_turns_per_s"] = round(
        incremental["new_turns_per_s"] / summary["incremental_one_client"]["new_turns_per_s"], 2
    )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["in-process", "served"], default="in-process")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "meld-causal.yaml")
    parser.add_argument("--dialogues", type=int, default=7, help="MELD dialogues of 20+ turns to replay (dev has 7)")
    parser.add_argument("--clients", type=int, default=8, help="callers at once (--part served)")
    parser.add_argument("--rounds", type=int, default=3, help="times each way is replayed (--part served)")
    parser.add_argument("--meld", type=Path, default=MELD)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="scoring server processes (--part served)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    predictor = causal_predictor(args.config)
    wanted = args.clients if args.part == "served" else args.dialogues
    dialogues = long_dialogues(args.meld, wanted)
    if len(dialogues) < wanted:
        raise SystemExit(
            f"{args.meld}: {len(dialogues)} dev dialogues of {TURNS}+ turns, fewer than the {wanted} asked for"
        )
    if args.part == "served":
        summary = served(predictor, dialogues, args.clients, args.threads, args.rounds, args.workers)
    else:
        summary = in_process(predictor, dialogues)
    print(
        json.dumps(
            {
                "benchmark": "incremental",
                "part": args.part,
                "threads": args.threads,
                "workers": args.workers,
                "dialogues": len(dialogues),
                "turns": TURNS,
                **summary,
            }
        )
    )


if __name__ == "__main__":
    main()
