"""Where generated artefacts live. Everything here is built by code and git-ignored."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"


def cache_dir() -> Path:
    """Converted weights and other derived caches (override with ASSISTANT_CACHE)."""
    return Path(os.environ.get("ASSISTANT_CACHE", REPO_ROOT / ".cache"))


def generated_dir() -> Path:
    """Synthesised corpora (override with ASSISTANT_DATA)."""
    return Path(os.environ.get("ASSISTANT_DATA", DATA_DIR / "generated"))


def runs_dir() -> Path:
    """Checkpoints, reports and plots of training / RSFT runs (override with ASSISTANT_RUNS)."""
    return Path(os.environ.get("ASSISTANT_RUNS", REPO_ROOT / "runs"))


def default_model_dir() -> Path:
    """The model the main job (`assistant run`) leaves behind for inference."""
    return runs_dir() / "main" / "final"


def resolve_model_dir(given: str | None) -> tuple[Path, str | None]:
    """The model folder to serve (``given`` or the main job's) and, when it holds no trained model, why and
    what to run instead (one message for every inference command)."""
    model_dir = Path(given) if given else default_model_dir()
    if (model_dir / "slu_config.json").is_file():
        return model_dir, None
    hint = ("run `assistant run` (the main job) to build the default model, or pass --model DIR" if not given
            else "pass a folder saved by `assistant train` / `assistant rsft` (e.g. runs/.../best)")
    return model_dir, f"no trained model at {model_dir}; {hint}"
