"""Training-step benchmark: ours against the released SpikEmo code, on the same batch shape, in one run.

64 dialogues whose lengths are drawn from MELD train's dialogue-length histogram (the longest set to 24),
text 384-d, audio 88-d, visual 96-d, the model and loss of configs/meld-paper.yaml (the released MELD
settings: width 256, T 32, 2 Spikformer blocks, 6 fusion layers of 1024) with the LIF neurons compiled
(``--eager`` to not), in fp32 and with bf16 autocast (``train.precision: bf16``), 2 threads; median seconds
per step (forward, backward, Adam) after a warm-up step (compilation, reported apart) and peak RSS. Each
measurement runs in a fresh subprocess so memory peaks do not mix. The anchor is measured in the same
invocation: ``../shared/reference/released_step.py`` times the released model (MIT, kept for benchmarks only)
on exactly the same dialogue lengths and input widths; it needs all three modalities, so only the ``all``
variant has ``released``, ``time_ratio`` and ``memory_ratio`` (ours / released). Prints one JSON line, with
the load average before and after.

    python bench/train_step.py [--steps 3] [--variants text,all] [--precisions fp32,bf16] [--eager]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from spikemo.config import MELD_LABELS, load_config
from spikemo.losses import SpikEmoLoss
from spikemo.model.batch import IGNORE_INDEX, DialogueBatch
from spikemo.model.spikemo import SpikEmo
from spikemo.training.precision import autocast

REPO = Path(__file__).resolve().parents[1]
PAPER_CONFIG = REPO / "configs" / "meld-paper.yaml"
RELEASED_STEP = REPO.parent / "shared" / "reference" / "released_step.py"
DIALOGUES = 64
MAX_LENGTH = 24
INPUT_DIMS = {"text": 384, "audio": 88, "visual": 96}
VARIANTS = {"text": ["text"], "all": ["text", "audio", "visual"]}
# MELD train: number of dialogues with 1, 2, ..., 24 utterances.
MELD_LENGTH_COUNTS = [70, 60, 54, 48, 67, 61, 74, 67, 50, 57, 55, 54, 36, 41, 43, 51, 30, 28, 27, 20, 20, 13, 7, 5]


def meld_shaped_lengths(generator: torch.Generator) -> torch.Tensor:
    weights = torch.tensor(MELD_LENGTH_COUNTS, dtype=torch.float)
    lengths = torch.multinomial(weights, DIALOGUES, replacement=True, generator=generator) + 1
    lengths[0] = MAX_LENGTH
    return lengths


def meld_shaped_batch(modalities: list[str], seed: int = 0) -> DialogueBatch:
    generator = torch.Generator().manual_seed(seed)
    lengths = meld_shaped_lengths(generator)
    utterance_mask = torch.arange(MAX_LENGTH)[None, :] < lengths[:, None]
    features = {
        m: torch.randn(DIALOGUES, MAX_LENGTH, INPUT_DIMS[m], generator=generator) * utterance_mask[..., None]
        for m in modalities
    }
    labels = torch.randint(len(MELD_LABELS), (DIALOGUES, MAX_LENGTH), generator=generator)
    return DialogueBatch(
        features=features,
        modality_mask={m: utterance_mask.clone() for m in modalities},
        utterance_mask=utterance_mask,
        party=torch.randint(3, (DIALOGUES, MAX_LENGTH), generator=generator),
        labels=labels.masked_fill(~utterance_mask, IGNORE_INDEX),
    )


def measure(modalities: list[str], steps: int, compile_neurons: bool, precision: str) -> dict[str, float]:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    batch = meld_shaped_batch(modalities)
    paper = load_config(PAPER_CONFIG, {"model.compile_neurons": compile_neurons})
    config = paper.model
    model = SpikEmo(config, {m: INPUT_DIMS[m] for m in modalities}, len(MELD_LABELS))
    criterion = SpikEmoLoss(paper.train.loss_weights, len(MELD_LABELS))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-5)
    model.train()
    timings, cpu_timings = [], []
    for _ in range(steps + 1):  # the first step warms up (and compiles the neurons)
        start, cpu_start = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        with autocast(precision, torch.device("cpu")):
            output = model(batch)
        loss = criterion(output, batch).total
        loss.backward()
        optimizer.step()
        timings.append(time.perf_counter() - start)
        cpu_timings.append(time.process_time() - cpu_start)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {
        "step_s": round(statistics.median(timings[1:]), 3),
        "step_cpu_s": round(statistics.median(cpu_timings[1:]), 2),
        "first_step_s": round(timings[0], 1),
        "peak_rss_gb": round(peak_gb, 3),
        "utterances": int(batch.utterance_mask.sum()),
        "loss": round(loss.item(), 4),
    }


def released(steps: int) -> dict[str, float]:
    """The released code's step on the lengths and widths of ``meld_shaped_batch`` (its own process)."""
    lengths = meld_shaped_lengths(torch.Generator().manual_seed(0)).tolist()
    command = [
        sys.executable,
        str(RELEASED_STEP),
        "--lengths",
        ",".join(map(str, lengths)),
        "--dims",
        ",".join(str(INPUT_DIMS[m]) for m in ("text", "audio", "visual")),
        "--timesteps",
        "32",
        "--steps",
        str(steps),
        "--threads",
        "2",
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    figures = json.loads(output.strip().splitlines()[-1])
    return {
        "step_s": figures["released_step_s"],
        "peak_rss_gb": figures["peak_rss_gb"],
        "utterances": figures["utterances"],
        "first_step_s": figures["first_step_s"],
        "halves": figures["halves"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--variants", default="text,all")
    parser.add_argument("--eager", action="store_true", help="do not torch.compile the LIF neurons")
    parser.add_argument(
        "--precisions", default="fp32,bf16", help="train.precision values to measure (bf16: autocast on CPU)"
    )
    parser.add_argument("--worker", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(
            json.dumps(
                measure(VARIANTS[args.worker], args.steps, compile_neurons=not args.eager, precision=args.precision)
            )
        )
        return
    result: dict[str, object] = {
        "bench": "train_step",
        "dialogues": DIALOGUES,
        "max_utterances": MAX_LENGTH,
        "threads": 2,
        "compile_neurons": not args.eager,
        "load_average_before": [round(load, 2) for load in os.getloadavg()],
    }
    anchor = None
    for variant in args.variants.split(","):
        for precision in args.precisions.split(","):
            command = [
                sys.executable,
                __file__,
                "--worker",
                variant,
                "--steps",
                str(args.steps),
                "--precision",
                precision,
            ]
            command += ["--eager"] if args.eager else []
            figures = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
            if VARIANTS[variant] == ["text", "audio", "visual"]:
                anchor = anchor or released(args.steps)
                if anchor["utterances"] != figures["utterances"]:
                    raise RuntimeError(
                        f"the released step saw {anchor['utterances']} utterances, ours {figures['utterances']}"
                    )
                figures["time_ratio"] = round(figures["step_s"] / anchor["step_s"], 3)
                figures["memory_ratio"] = round(figures["peak_rss_gb"] / anchor["peak_rss_gb"], 3)
            result[f"{variant}_{precision}"] = figures
    if anchor is not None:
        result["released"] = anchor
    result["load_average_after"] = [round(load, 2) for load in os.getloadavg()]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
