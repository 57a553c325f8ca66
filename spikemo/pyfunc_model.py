"""The MLflow pyfunc around a trained SpikEmo, logged as code (models-from-code: nothing is pickled).

Input: a DataFrame of utterances (``dialogue_id``, ``utterance_index``, ``speaker``, ``text`` and
optionally ``media_path``, ``media_start``, ``media_end``). Features are rebuilt with the encoders the
model records; media paths resolve against the ``media_root`` parameter. Output: one row per utterance
with the predicted ``label`` and ``prob_<label>`` for every class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext

from spikemo.predict import Predictor


class SpikEmoPyfunc(PythonModel):
    def load_context(self, context: PythonModelContext) -> None:
        self.predictor = Predictor.from_bundle(Path(context.artifacts["bundle"]))

    def predict(self, context: PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        media_root = (params or {}).get("media_root")
        return self.predictor.predict_frame(model_input, Path(media_root) if media_root else None)


mlflow.models.set_model(SpikEmoPyfunc())
