"""Where lightalign keeps its cache and finds its recipes and configs."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent
RECIPES_ENV = "LIGHTALIGN_RECIPES_DIR"


def lightalign_home() -> Path:
    """The cache root: ``$LIGHTALIGN_HOME``, default ``~/.cache/lightalign``."""
    return Path(os.environ.get("LIGHTALIGN_HOME", Path.home() / ".cache" / "lightalign")).expanduser()


def _installed_or_source(installed: str, source: str) -> Path:
    # A wheel carries recipes/ and conf/ inside the package; an editable install reads the source tree.
    inside = _PACKAGE_DIR / installed
    return inside if inside.is_dir() else _PACKAGE_DIR.parents[1] / source


def _copied_recipes() -> Path | None:
    # Set by `lightalign run --from DIR`: a folder made by `lightalign cp` (DIR/<recipe>.py, DIR/conf/).
    folder = os.environ.get(RECIPES_ENV)
    return Path(folder).expanduser().resolve() if folder else None


def recipes_dir() -> Path:
    """The folder holding the stage recipes (``sft.py``, ...): ``$LIGHTALIGN_RECIPES_DIR`` when set."""
    return _copied_recipes() or _installed_or_source("recipes", "recipes")


def conf_dir() -> Path:
    """The folder holding the Hydra config tree (``$LIGHTALIGN_RECIPES_DIR/conf`` when that is set)."""
    copied = _copied_recipes()
    return copied / "conf" if copied else _installed_or_source("conf", "conf")
