"""User-facing errors: one line that names the file, line and field (or the key and its valid options).

Library code raises a subclass of :class:`LightalignError`; recipes and the CLI turn it into a single line
on stderr and a non-zero exit instead of a stack trace (:func:`report_errors`).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

EXIT_USER_ERROR = 2

F = TypeVar("F", bound=Callable[..., Any])


class LightalignError(Exception):
    """An error caused by the user's input (data, config, paths), reported as one line."""


class DataError(LightalignError):
    """A row of input data that cannot be used. The message starts with ``file:line``."""

    def __init__(self, origin: str, message: str, field: str | None = None) -> None:
        where = f"{origin}: field '{field}': " if field else f"{origin}: "
        super().__init__(where + message)
        self.origin = origin
        self.field = field
        self.message = message  # without the origin: a caller adding context re-raises with the same origin


class ConfigError(LightalignError):
    """A configuration value that composes but cannot be used (e.g. a path that does not exist)."""


class ModelNotFoundError(LightalignError):
    """A model folder or id that cannot be found, or the embedded model's package is missing."""


class NonFiniteLossError(LightalignError):
    """The training loss became NaN or infinite; the last complete checkpoint stays valid."""


class RewardError(LightalignError):
    """A reward callable (a ``(prompts, answers) -> scores`` part of an RL stage's reward) raised, or returned
    the wrong number of scores or one that is not a finite number; it names the part."""


def _is_user_error(err: Exception) -> bool:
    from omegaconf.errors import OmegaConfBaseException

    # OmegaConf raises when a mandatory value (``???``) was not given or a value has the wrong type.
    return isinstance(err, LightalignError | OmegaConfBaseException)


EXIT_INTERRUPTED = 130  # the shell's code for a process stopped by Ctrl-C (128 + SIGINT)


def resume_hint(run_dir: Path | str | None, *, named: bool) -> str:
    """How to resume a stopped run: the same command when it named its directory (``hydra.run.dir=``), else that
    directory (the same command without it would start a new, timestamped run)."""
    if named or run_dir is None:
        return "re-run the same command to resume"
    return f"re-run it with hydra.run.dir={run_dir} to resume"


def _hydra_run_dir() -> tuple[str | None, bool]:
    """The running Hydra job's output directory and whether the command named it; ``(None, True)`` outside one."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None, True
    try:  # a config composed outside a run (``compose``) has no output directory: then say nothing of one
        config = HydraConfig.get()
        return config.runtime.output_dir, any(o.startswith("hydra.run.dir=") for o in config.overrides.hydra)
    except Exception:  # omegaconf's MissingMandatoryValue and kin
        return None, True


def report_errors(func: F) -> F:
    """Turn :class:`LightalignError` into one line on stderr and exit code 2, and Ctrl-C into one line and 130
    (a stage resumes from its last checkpoint: nothing more to say than how).

    Set ``LIGHTALIGN_DEBUG=1`` to get the full stack trace instead.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except KeyboardInterrupt:
            if os.environ.get("LIGHTALIGN_DEBUG"):
                raise
            run_dir, named = _hydra_run_dir()
            print(f"lightalign: interrupted; {resume_hint(run_dir, named=named)} from the last checkpoint",
                  file=sys.stderr)
            sys.exit(EXIT_INTERRUPTED)
        except Exception as err:
            if os.environ.get("LIGHTALIGN_DEBUG") or not _is_user_error(err):
                raise
            message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            print(f"lightalign: error: {message}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)

    return wrapper  # type: ignore[return-value]
