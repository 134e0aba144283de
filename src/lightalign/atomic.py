"""Build a folder so that it exists complete or not at all, even when several processes build it at once.

The one mechanism behind every folder lightalign builds in one go: the first-use caches (the embedded and
tiny models, the demo data), ``lightalign export`` and the PPO checkpoints. The content is written into a
hidden staging folder next to the target (``.<name>.tmp-XXXX``, same file system, so the rename is atomic)
and renamed into place when complete::

    build_folder_atomically(cache / "my-model", lambda folder: model.save_pretrained(folder))

Two processes building the same cache (``lightalign run full`` starts SFT and the reward stage side by
side, and both find the model not yet converted) both build; the first rename wins, the loser discards its
copy and uses the winner's.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

STAGING = ".tmp-"  # in the name of a folder being built: `.<target name>.tmp-XXXX`
ASIDE = ".old-"  # in the name of a replaced folder being deleted: `.<target name>.old-XXXX`


def build_folder_atomically(target: Path, build: Callable[[Path], object], *, replace: bool = False) -> Path:
    """Build ``target`` in a staging folder next to it and rename that into place when ``build`` returns.

    On any exception in ``build`` (KeyboardInterrupt included) the staging folder is deleted and ``target``
    is left as it was.

    Args:
        target: The folder to create; its parent is created if missing.
        build: Writes the content into the (existing, empty) folder it is given; its return value is ignored.
        replace: What to do with a ``target`` that exists once the build is done. ``False`` (caches): keep
            it and discard ours, since another process finished the same build first. ``True`` (exports,
            checkpoints): replace it with ours; the old one is moved aside before it is deleted, so no
            half-deleted folder is ever seen at ``target``.

    Returns:
        ``target``.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}{STAGING}", dir=target.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # mkdtemp makes it private (0700); the result is an ordinary folder
        build(staging)
        _move_into_place(staging, target, replace=replace)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def remove_leftovers(parent: Path, name_pattern: str = "*") -> None:
    """Delete the staging and set-aside folders that a process killed mid-build left in ``parent``.

    Only for a folder that no other process builds into at the same time (a run's own checkpoints): there,
    a staging folder can only be a dead process's. ``name_pattern`` is a glob on the target's name.
    """
    for marker in (STAGING, ASIDE):
        for leftover in parent.glob(f".{name_pattern}{marker}*"):
            shutil.rmtree(leftover, ignore_errors=True)


def _move_into_place(staging: Path, target: Path, *, replace: bool) -> None:
    # A loop, not one rename: with `replace`, another process may put its own target in place between our
    # moving the old one aside and our rename.
    set_aside: list[Path] = []
    while True:
        try:
            staging.rename(target)  # succeeds when target is missing (or an empty folder)
            break
        except OSError:
            if not (target.exists() or target.is_symlink()):
                raise  # not a race: e.g. no permission
            if not replace:
                # another process finished the same build first: its folder is as good as ours
                shutil.rmtree(staging, ignore_errors=True)
                return
        aside = target.with_name(f".{target.name}{ASIDE}{uuid.uuid4().hex[:8]}")
        try:
            os.rename(target, aside)
        except FileNotFoundError:  # another process moved it aside first
            continue
        set_aside.append(aside)
    # deleted only once ours is in place: target is missing for the time of one rename, not of a deletion
    for old in set_aside:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
