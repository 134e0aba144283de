"""Weights off the checkpoint's memory map, and freed heap handed back (lightalign.memory)."""

import mmap
import sys
from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch

from lightalign.memory import own_mapped_weights, page_out_mapped_files, pages_released, release_freed_memory
from lightalign.models import Quantization, load_base_model
from lightalign.models.loading import checkpoint_locations


def _kernel_pages_out() -> bool:
    """MADV_PAGEOUT came with Linux 5.4."""
    import platform

    major, minor = (int(part) for part in platform.release().split(".")[:2])
    return (major, minor) >= (5, 4)


needs_pageout = pytest.mark.skipif(not sys.platform.startswith("linux") or not _kernel_pages_out(),
                                   reason="needs Linux >= 5.4 (MADV_PAGEOUT) and /proc/self/smaps")


def _mapped_files() -> set[str]:
    return {line.split(maxsplit=5)[5].strip() for line in Path("/proc/self/maps").read_text().splitlines()
            if len(line.split(maxsplit=5)) == 6}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_a_4bit_model_on_cpu_keeps_no_map_of_its_checkpoint(tiny_model_dir):
    checkpoint = str((Path(tiny_model_dir) / "model.safetensors").resolve())
    model = load_base_model(str(tiny_model_dir), Quantization())
    assert checkpoint not in _mapped_files()  # fails if the embeddings were left as views into the file
    # the weights did not change by being copied
    full = load_base_model(str(tiny_model_dir), Quantization(load_in_4bit=False))
    assert torch.equal(model.get_input_embeddings().weight, full.get_input_embeddings().weight)


def test_own_mapped_weights_copies_plain_tensors_once_and_leaves_4bit_weights(tiny_model_dir):
    model = load_base_model(str(tiny_model_dir), Quantization())
    model.lm_head.weight = model.get_input_embeddings().weight  # tied, as SmolLM2's
    embedding = model.get_input_embeddings().weight
    before = embedding.data_ptr()
    values = embedding.detach().clone()
    packed = {id(m): m.weight.data_ptr() for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert own_mapped_weights(model) > 0
    assert embedding.data_ptr() != before and torch.equal(embedding, values)
    assert model.lm_head.weight is model.get_input_embeddings().weight  # still tied
    assert {id(m): m.weight.data_ptr() for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)} == packed


def test_release_freed_memory_is_safe_to_call_any_time():
    kept = [torch.ones(1 << 18) for _ in range(8)]
    del kept[::2]
    first, second = release_freed_memory(), release_freed_memory()
    assert first == second
    if sys.platform.startswith("linux") and Path("/lib/x86_64-linux-gnu/libc.so.6").exists():
        assert first  # glibc has malloc_trim


def _resident_kb(path: Path) -> int:
    """Resident kB of this process's maps of ``path`` (from /proc/self/smaps)."""
    total, inside = 0, False
    target = str(path.resolve())
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:  # a map's header line
            inside = len(fields) == 6 and fields[5] == target
        elif inside and fields[0] == "Rss:":
            total += int(fields[1])
    return total


def _mapped_and_read(path: Path, size: int = 8 << 20) -> tuple[mmap.mmap, bytes]:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(range(256)) * (size // 256))
    with path.open("rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return mapped, mapped[:]  # reading every page makes it resident


@needs_pageout
def test_page_out_drops_the_resident_pages_of_maps_under_a_folder_only_and_keeps_their_contents(tmp_path):
    inside = tmp_path / "model" / "weights.bin"
    outside = tmp_path / "model-other" / "weights.bin"  # a sibling whose name starts the same: not under "model"
    mapped_inside, content = _mapped_and_read(inside)
    mapped_outside, _ = _mapped_and_read(outside)
    assert _resident_kb(inside) >= 8 << 10 and _resident_kb(outside) >= 8 << 10
    assert page_out_mapped_files([tmp_path / "model"]) >= 8 << 20
    assert _resident_kb(inside) < 1 << 10  # fails if the pages stay resident
    assert _resident_kb(outside) >= 8 << 10  # fails if the prefix matched the sibling
    assert mapped_inside[:] == content  # read back from the file
    mapped_inside.close()
    mapped_outside.close()


@needs_pageout
def test_pages_released_pages_out_while_the_block_runs_and_stops_its_thread(tmp_path):
    import threading
    import time

    folder = tmp_path / "checkpoint"
    with pages_released([folder], every=0.01):
        mapped, _ = _mapped_and_read(folder / "weights.bin")  # resident; the thread pages it out within the block
        deadline = time.monotonic() + 5
        while _resident_kb(folder / "weights.bin") > 1 << 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _resident_kb(folder / "weights.bin") < 1 << 10
    assert not any(t.name == "lightalign-page-out" for t in threading.enumerate())
    mapped.close()


def test_checkpoint_locations_follow_linked_weight_files_and_hub_ids_to_the_cache(tmp_path, monkeypatch):
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshot"
    blobs.mkdir()
    snapshot.mkdir()
    (blobs / "abc").write_bytes(b"x")
    (snapshot / "model.safetensors").symlink_to(blobs / "abc")
    assert checkpoint_locations(str(snapshot)) == sorted([str(snapshot.resolve()), str(blobs.resolve())])
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    assert checkpoint_locations("org/name") == [str(tmp_path / "hub" / "models--org--name")]
