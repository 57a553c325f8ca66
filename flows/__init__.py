"""Prefect flows: thin orchestration over the ``spikemo`` library (which runs without Prefect too).

``preprocess`` (ingest → one extraction task per modality and shard group), ``train`` (train → evaluate
→ log → register with gating), ``pipeline`` (the DAG: preprocess then train), ``score`` (batch scoring)
and the ``spikemo demo`` driver.
"""
