"""The repository's own rules beyond ruff: ruff's line length holds for docs and configs too."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_no_tracked_text_file_has_a_line_longer_than_ruffs_limit() -> None:
    limit = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["ruff"]["line-length"]
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    too_long = []
    for name in tracked.splitlines():
        try:
            lines = (REPO / name).read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:  # binary files (images) have no lines to keep short
            continue
        too_long += [f"{name}:{number} ({len(line)})" for number, line in enumerate(lines, 1) if len(line) > limit]
    assert not too_long, f"lines over {limit} characters: {too_long}"
