"""Weights off the checkpoint's memory map, and freed heap handed back (lightalign.memory)."""

import sys
from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch

from lightalign.memory import own_mapped_weights, release_freed_memory
from lightalign.models import Quantization, load_base_model


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
