"""Live scoring latency: the newest turn of a 20-turn MELD dialogue, text encoding included, on CPU.

For every MELD dev dialogue of at least 20 turns (cut to its first 20), each turn k is scored as it arrives
(the request holds turns 0..k), three ways in the same invocation:
- ``incremental``: one ``IncrementalScorer`` kept across requests (earlier turns' encodings reused);
- ``rescore_in_memory``: another scorer whose memory is emptied before each request (every turn of the
  conversation so far encoded again, the encoder already loaded);
- ``rescore_predict_frame``: ``Predictor.predict_frame`` on the conversation so far (what the pyfunc and
  ``spikemo predict`` run per request without ``newest``: ingest, feature cache, model).
The model is configs/meld-causal.yaml's (MiniLM's 4th layer, text only) with freshly initialised weights:
latency does not depend on their values. Prints p50/p95 per way (all turns, and the 20th turn alone) and
the ratios of the rescoring ways to the incremental one.

    .venv/bin/python bench/incremental.py
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from spikemo.bundle import EncoderSpec, ModelSpec
from spikemo.config import load_config
from spikemo.features.base import build_encoder
from spikemo.incremental import IncrementalScorer
from spikemo.model.spikemo import SpikEmo
from spikemo.predict import Predictor

REPO = Path(__file__).resolve().parents[1]
MELD = REPO.parent / "shared" / "data" / "meld"
TURNS = 20


def causal_predictor(config_path: Path) -> Predictor:
    config = load_config(config_path, {"features.modalities": ["text"]})
    encoder = build_encoder("text", config.features)
    spec = ModelSpec(
        dataset="meld", labels=["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"], model=config.model,
        features=config.features, encoders={"text": EncoderSpec(encoder=config.features.text, fingerprint=encoder.fingerprint, dim=encoder.dim)},
    )
    torch.manual_seed(0)
    return Predictor(SpikEmo(spec.model, spec.input_dims, len(spec.labels)), spec)


def long_dialogues(meld: Path, limit: int) -> list[pd.DataFrame]:
    dev = pd.read_csv(meld / "dev_sent_emo.csv", dtype={"Dialogue_ID": str}, keep_default_na=False)
    dev = dev.rename(columns={"Dialogue_ID": "dialogue_id", "Utterance_ID": "utterance_index", "Speaker": "speaker", "Utterance": "text"})
    dialogues = [turns.sort_values("utterance_index").head(TURNS) for _, turns in dev.groupby("dialogue_id") if len(turns) >= TURNS]
    return [turns[["dialogue_id", "utterance_index", "speaker", "text"]].reset_index(drop=True) for turns in dialogues[:limit]]


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "meld-causal.yaml")
    parser.add_argument("--dialogues", type=int, default=10, help="MELD dev dialogues of 20+ turns to replay")
    parser.add_argument("--meld", type=Path, default=MELD)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    predictor = causal_predictor(args.config)
    dialogues = long_dialogues(args.meld, args.dialogues)
    scorer, anchor = IncrementalScorer(predictor), IncrementalScorer(predictor)  # one loaded encoder each, as a server holds
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
            "p50_ms": round(float(np.percentile(spent, 50)), 2),
            "p95_ms": round(float(np.percentile(spent, 95)), 2),
            "turn20_p50_ms": round(float(np.percentile(spent[:, -1], 50)), 2),
            "turn20_p95_ms": round(float(np.percentile(spent[:, -1], 95)), 2),
        }
    fastest = summary["incremental"]
    for way in ("rescore_in_memory", "rescore_predict_frame"):
        summary[f"{way}_over_incremental_turn20_p95"] = round(summary[way]["turn20_p95_ms"] / fastest["turn20_p95_ms"], 2)
    print(json.dumps({"benchmark": "incremental", "threads": args.threads, "dialogues": len(dialogues), "turns": TURNS, **summary}))


if __name__ == "__main__":
    main()
