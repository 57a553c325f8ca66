"""Dialogue datasets from the feature caches, the SpikEmo training loop, evaluation and checkpoints."""

from spikemo.training.data import DialogueData, DialogueDataset, build_dialogue_data, collate_dialogues
from spikemo.training.evaluation import evaluate, predict
from spikemo.training.loop import NonFiniteLossError, TrainResult
from spikemo.training.recipe import train_model, train_on_dialogue_data

__all__ = [
    "DialogueData",
    "DialogueDataset",
    "NonFiniteLossError",
    "TrainResult",
    "build_dialogue_data",
    "collate_dialogues",
    "evaluate",
    "predict",
    "train_model",
    "train_on_dialogue_data",
]
