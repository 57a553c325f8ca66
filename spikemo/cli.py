"""The ``spikemo`` command: parse options, call the library, end standard output with one JSON line.

Exit codes: 0 success; 1 unexpected internal error (re-run with ``--debug`` for the traceback);
2 invalid options or configuration; 3 unusable input (missing file or column, no valid row);
130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spikemo.config import SpikEmoConfig, load_config, parse_override
from spikemo.errors import SpikemoError

log = logging.getLogger("spikemo")

Command = Callable[[argparse.Namespace, SpikEmoConfig], dict[str, Any]]


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="YAML config file (see configs/)")
    common.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.epochs=5 (repeatable; value read as YAML)",
    )
    common.add_argument("--workdir", type=Path, help="work directory: MLflow store, run outputs (env SPIKEMO_HOME, default ./.spikemo)")
    common.add_argument("--cache", type=Path, help="feature cache directory (default ./feature_cache)")
    common.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
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
    from spikemo.data.ingest import ingest

    out = args.out or config.cache / config.data.dataset_name / "manifest.parquet"
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


def build_parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser = argparse.ArgumentParser(
        prog="spikemo",
        description="Multimodal emotion recognition in conversations with SpikEmo: ingest, extract, train, register.",
        epilog="Every command ends its standard output with one JSON line summarising its results.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ingest = commands.add_parser(
        "ingest",
        parents=[common],
        help="validate a raw dataset into an utterance manifest (Parquet)",
        description="Read a raw dataset (MELD layout, EmoryNLP, or a generic manifest), validate every row, "
        "and write the utterance manifest plus a table of problem rows beside it.",
    )
    _dataset_options(ingest)
    ingest.add_argument("--out", type=Path, help="manifest path (default: <cache>/<dataset>/manifest.parquet)")
    ingest.set_defaults(handler=cmd_ingest, overrides_from=_dataset_overrides)
    return parser


def resolve_config(args: argparse.Namespace) -> SpikEmoConfig:
    overrides: dict[str, Any] = dict(parse_override(item) for item in args.overrides)
    if args.workdir:
        overrides["workdir"] = str(args.workdir)
    if args.cache:
        overrides["cache"] = str(args.cache)
    overrides.update(args.overrides_from(args))
    return load_config(args.config, overrides)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="spikemo: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
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
        print(f"spikemo: internal error: {type(error).__name__}: {error} (re-run with --debug for details)", file=sys.stderr)
        return 1
    sys.stdout.flush()
    print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
