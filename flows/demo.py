"""``spikemo demo``: the newcomer's tour of the whole DAG on the generated corpus.

Generates the demo corpus when absent, runs the ``pipeline`` flow on an ephemeral Prefect API (state
under ``<workdir>/prefect``), a sqlite MLflow store and the local feature cache, then says where to look.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spikemo.config import SpikEmoConfig
from spikemo.reports import score_with_interval, verdict_line
from spikemo.servers import run_until_stopped

if TYPE_CHECKING:
    from prefect.server.api.server import SubprocessASGIServer

PREFECT_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "spikemo",  # the library's own log lines (epochs, counts, gating) in the run logs
}
# The corpus `spikemo demo` generates: 160 dialogues, so that a fresh clone's `make demo` (install included) fits
# 3 minutes on 2 cores; 55% of them test dialogues (~750 clips), so that the difference from the linear probe has
# a 95% interval of about ±3 points; video at 5 frames a second (the visual encoders sample 4 frames a clip).
# `spikemo make-demo-data` keeps MELD's proportions (70/10/20) and 10 fps by default.
DEMO_RUN_CORPUS = {"dialogues": 160, "split_fractions": (0.35, 0.1, 0.55), "fps": 5}
# What the pipeline imports first: its flows (torch, MLflow, Prefect, MediaPipe, openSMILE) and the model loading
# every Hugging Face encoder goes through (transformers.modeling_utils, about 1,200 modules with torch's compiler).
PIPELINE_MODULES = ("flows.pipeline", "transformers.modeling_utils")


def prepare_environment(workdir: Path) -> None:
    """Keep Prefect's local state in the work directory unless the user points it elsewhere."""
    os.environ.setdefault("PREFECT_HOME", str((workdir / "prefect").resolve()))
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    for key, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)


def prepare_pipeline_in_background() -> list[threading.Thread]:
    """While the corpus renders in worker processes, import ``PIPELINE_MODULES`` (about 15 s on 2 cores, longer from
    a fresh install with no bytecode yet) and, without a configured Prefect API, start the temporary server the
    first flow would otherwise start (about 10 s). The caller joins the threads before the flow runs; the flow
    repeats whatever failed here, and reports it."""
    threads = [
        threading.Thread(target=_unless_failing, args=(step,), name=f"pipeline-preparation-{index}", daemon=True)
        for index, step in enumerate([_start_temporary_prefect_api, _import_pipeline_modules])
    ]
    for thread in threads:
        thread.start()
    return threads


def _unless_failing(step: Callable[[], object]) -> None:
    with contextlib.suppress(Exception):  # the flow imports and starts the API itself and reports what fails
        step()


def _import_pipeline_modules() -> None:
    for name in PIPELINE_MODULES:
        importlib.import_module(name)


def _start_temporary_prefect_api() -> None:
    if (server := temporary_prefect_api()) is not None:
        server.start()


def temporary_prefect_api() -> SubprocessASGIServer | None:
    """The temporary Prefect API a flow starts for itself; None where an API is configured or that server is off."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return None
    return SubprocessASGIServer()


def run_demo(config: SpikEmoConfig, data: Path | None, dialogues: int | None) -> dict[str, Any]:
    prepare_environment(config.workdir)
    from spikemo.data.demo import DemoCorpusSettings, make_demo_corpus

    corpus = Path(data) if data else config.workdir / "demo_corpus"
    if not (corpus / "train_sent_emo.csv").is_file():
        settings = DemoCorpusSettings(
            **{**DEMO_RUN_CORPUS, **({"dialogues": dialogues} if dialogues else {})}, overwrite=True
        )
        print(f"generating the demo corpus in {corpus} ...", file=sys.stderr)
        preparing = prepare_pipeline_in_background()
        generated = make_demo_corpus(corpus, settings)
        print(
            f"generated {sum(generated.clips.values())} clips ({generated.media_seconds / 60:.0f} minutes of media) in "
            f"{generated.wall_seconds:.0f} s",
            file=sys.stderr,
        )
        for thread in preparing:
            thread.join()
    from flows.pipeline import pipeline_flow

    config = config.model_copy(
        update={
            "data": config.data.model_copy(
                update={"format": "meld", "root": corpus, "name": config.data.name or "demo"}
            )
        }
    )
    result = pipeline_flow(config=config.model_dump(mode="json"))
    trained = result["train"]
    print(
        "\n".join(
            [
                "",
                f"SpikEmo on the demo corpus ({result['preprocess']['utterances']} utterances, "
                f"modalities {', '.join(config.features.modalities)}):",
                f"  dev weighted-F1  {trained['dev_weighted_f1']:.2f}",
                f"  test weighted-F1 {score_with_interval(trained, 'test_weighted_f1')}   macro-F1 "
                f"{score_with_interval(trained, 'test_macro_f1')}   "
                f"accuracy {score_with_interval(trained, 'test_accuracy')}",
                "  linear probe on the same features: test weighted-F1 "
                f"{score_with_interval(trained, 'baseline_test_weighted_f1')}",
                f"  SpikEmo - probe: {verdict_line(trained)}   (95% intervals over test dialogues)",
                f"  registered: {trained['model_uri']} -> alias '{trained['alias']}'",
                "",
                f"MLflow UI:  spikemo ui --workdir {config.workdir}      (http://127.0.0.1:5000)",
                f"Prefect UI: spikemo prefect-ui --workdir {config.workdir}   (http://127.0.0.1:4200)",
                f"Predict:    spikemo predict --workdir {config.workdir} "
                f"--model models:/{trained['registered_model']}@champion "
                f"--input {corpus / 'test_sent_emo.csv'} --media-root {corpus / 'output_repeated_splits_test'} "
                "--out predictions.jsonl",
            ]
        )
    )
    return {"command": "demo", "corpus": str(corpus), **trained, "preprocess": result["preprocess"]}


def serve_prefect_ui(workdir: Path, host: str, port: int) -> dict[str, Any]:
    """Run a Prefect server (API + UI) over the work directory's Prefect state until interrupted. The UI is
    told where the API is, so any port works (``prefect server start --port`` alone leaves it calling 4200)."""
    prepare_environment(workdir)
    api_url = f"http://{host}:{port}/api"
    environment = {
        **os.environ,
        "PREFECT_SERVER_API_HOST": host,
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_UI_API_URL": api_url,
    }
    prefect = Path(sys.executable).with_name("prefect")
    print(
        f"Prefect UI for {os.environ['PREFECT_HOME']} at http://{host}:{port} (Ctrl-C or SIGTERM stops it)",
        file=sys.stderr,
    )
    run_until_stopped([str(prefect), "server", "start", "--host", host, "--port", str(port)], env=environment)
    return {
        "command": "prefect-ui",
        "url": f"http://{host}:{port}",
        "api_url": api_url,
        "prefect_home": os.environ["PREFECT_HOME"],
    }
