"""The MLflow pyfunc around a trained SpikEmo, logged as code (models-from-code: nothing is pickled).

Input: a DataFrame of utterances (``dialogue_id``, ``utterance_index``, ``speaker``, ``text`` and
optionally ``media_path``, ``media_start``, ``media_end``). Features are rebuilt with the encoders the
model records; media paths resolve against the ``media_root`` parameter. Output: one row per utterance
with the predicted ``label`` and ``prob_<label>`` for every class.

With the ``newest`` parameter n > 0 each dialogue is a conversation so far: only its n newest turns are
answered, by the live scorer (spikemo/incremental.py) that the loaded model keeps for each media root, so a
served model (``mlflow models serve``) encodes only the turns a conversation's earlier requests did not already
bring. The scoring server calls ``predict`` from several threads: scorers are made under a lock, and requests that
reach a scorer together are answered together, one group at a time.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext

from spikemo.incremental import IncrementalScorer
from spikemo.predict import Predictor


class SpikEmoPyfunc(PythonModel):
    def load_context(self, context: PythonModelContext) -> None:
        self.predictor = Predictor.from_bundle(Path(context.artifacts["bundle"]))
        self.scorers: dict[Path, IncrementalScorer] = {}  # by media root
        self.scorers_lock = threading.Lock()

    def predict(
        self, context: PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        params = params or {}
        media_root = Path(params["media_root"]) if params.get("media_root") else None
        newest = int(params.get("newest") or 0)
        if newest > 0:
            return self._newest_turns(model_input, media_root, newest)
        return self.predictor.predict_frame(model_input, media_root)

    def _newest_turns(self, model_input: pd.DataFrame, media_root: Path | None, newest: int) -> pd.DataFrame:
        with self.scorers_lock:
            scorer = self.scorers.get(media_root)
            if scorer is None:
                root = (media_root or Path.cwd()).resolve()
                scorer = self.scorers.setdefault(media_root, IncrementalScorer(self.predictor, root))
        conversations: dict[str, list[dict[str, Any]]] = {}  # grouped without pandas: cheaper per request
        for turn in model_input.to_dict("records"):
            conversations.setdefault(str(turn["dialogue_id"]), []).append(turn)
        answers: dict[str, list[Any]] = {"dialogue_id": [], "utterance_index": [], "label": []}
        for dialogue, turns in conversations.items():
            turns.sort(key=lambda turn: turn["utterance_index"])
            request = {"dialogue_id": dialogue, "newest": newest, "turns": turns}
            for turn in scorer.score(request)["turns"]:
                answers["dialogue_id"].append(dialogue)
                answers["utterance_index"].append(int(turns[turn["utterance_index"]]["utterance_index"]))
                answers["label"].append(turn["label"])
                for label, probability in turn["probabilities"].items():
                    answers.setdefault(f"prob_{label}", []).append(probability)
        return pd.DataFrame(answers)


mlflow.models.set_model(SpikEmoPyfunc())
