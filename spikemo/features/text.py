"""Text encoders: utterances (optionally with their dialogue context) to sentence vectors."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import transformers
from pydantic import Field

from spikemo.features.base import EncodedBatch, Encoder, EncoderParams, batches, model_files, register_encoder
from spikemo.features.hf import load_pretrained, masked_mean, resolve_model_dir


@dataclass(frozen=True)
class TextItem:
    """What the encoder reads for one utterance: the preceding turns (may be empty) and the utterance."""

    context: str
    text: str

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(f"{self.context}\x1e{self.text}".encode()).hexdigest()

    def __len__(self) -> int:
        return len(self.context) + len(self.text)


class TextEncoder(Encoder):
    modality = "text"

    def build_inputs(self, manifest: pd.DataFrame) -> list[TextItem]:
        """One ``TextItem`` per manifest row, in the manifest's row order."""
        return [TextItem("", text) for text in manifest["text"]]


class HFTextParams(EncoderParams):
    model: str = Field("minilm", description="Hugging Face model folder or cached id; 'minilm' = packaged all-MiniLM-L6-v2.")
    pooling: Literal["mean", "cls"] = "mean"
    context_turns: int = Field(0, ge=0, description="Previous utterances of the dialogue given as a first segment (EmoBERTa).")
    speaker_names: bool = Field(False, description="Prepend 'Speaker: ' to the utterance and to each context turn.")
    max_length: int = Field(256, ge=8)
    normalize: bool = False


@register_encoder
class HFTextEncoder(TextEncoder):
    """Any Hugging Face text encoder (AutoModel + AutoTokenizer), mean- or CLS-pooled."""

    name = "hf-text"
    Params = HFTextParams
    params: HFTextParams

    @functools.cached_property
    def model_dir(self) -> Path:
        return resolve_model_dir(self.params.model, "features.text.params.model")

    @functools.cached_property
    def _loaded(self) -> tuple[Any, Any]:
        setting = "features.text.params.model"
        tokenizer = load_pretrained(transformers.AutoTokenizer, self.model_dir, setting)
        if self.params.context_turns:
            tokenizer.truncation_side = "left"
        model = load_pretrained(transformers.AutoModel, self.model_dir, setting)
        return tokenizer, model.to(self.runtime.device).eval()

    @property
    def dim(self) -> int:
        return int(self._loaded[1].config.hidden_size)

    def weight_files(self) -> dict[str, Path]:
        return model_files(self.model_dir)

    def library_versions(self) -> dict[str, str]:
        return {**super().library_versions(), "transformers": transformers.__version__}

    def build_inputs(self, manifest: pd.DataFrame) -> list[TextItem]:
        lines = manifest["text"].astype(str)
        if self.params.speaker_names:
            lines = manifest["speaker"].astype(str) + ": " + lines
        if not self.params.context_turns:
            return [TextItem("", line) for line in lines]
        items: list[TextItem | None] = [None] * len(manifest)
        order = manifest.assign(_line=lines.to_numpy(), _row=np.arange(len(manifest))).sort_values(["split", "dialogue_id", "turn"])
        for _, dialogue in order.groupby(["split", "dialogue_id"], sort=False):
            turns = dialogue["_line"].tolist()
            for position, row in enumerate(dialogue["_row"]):
                context = " ".join(turns[max(0, position - self.params.context_turns) : position])
                items[row] = TextItem(context, turns[position])
        return items

    @torch.inference_mode()
    def encode(self, inputs: Sequence[TextItem]) -> EncodedBatch:
        tokenizer, model = self._loaded
        out = np.zeros((len(inputs), self.dim), dtype=np.float32)
        longest_first = sorted(range(len(inputs)), key=lambda i: len(inputs[i]), reverse=True)
        for chunk in batches(len(inputs), self.runtime.batch_size, longest_first):
            texts = [inputs[i].text for i in chunk]
            pairs = ([inputs[i].context for i in chunk], texts) if self.params.context_turns else (texts,)
            tokens = tokenizer(
                *pairs, padding=True, truncation=True, max_length=self.params.max_length, return_tensors="pt"
            ).to(self.runtime.device)
            with self.runtime.autocast():
                states = model(**tokens).last_hidden_state
            pooled = states[:, 0] if self.params.pooling == "cls" else masked_mean(states, tokens["attention_mask"])
            if self.params.normalize:
                pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
            out[chunk] = pooled.float().cpu().numpy()
        return EncodedBatch(out)
