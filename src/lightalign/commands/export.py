"""``lightalign export``: a trained stage as a folder other tools load, its adapter alone or merged.

    lightalign export DIR --out my-adapter                   # the LoRA adapter (+ tokenizer), PEFT format
    lightalign export DIR --out my-model --merge             # base + adapter in one model, fp32 safetensors
    lightalign export DIR --out my-model --merge --dtype bf16

``--merge`` loads the base in **full precision**, never 4-bit, adds the adapter to its weights and saves the
result, so that ``AutoModelForCausalLM.from_pretrained(OUT)`` needs neither PEFT nor bitsandbytes. Merging
into 4-bit weights would round the merged weights back to 4 bits and lose most of what the adapter learned;
merging into the dequantised base keeps it. The adapter was trained on the 4-bit base, whose weights differ
from full precision by the quantisation error: the merged model is base + adapter, as PEFT would run it on
the full-precision base.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from lightalign.atomic import build_folder_atomically
from lightalign.errors import ConfigError
from lightalign.generation import stop_token_ids
from lightalign.models.adapters import is_quantized
from lightalign.models.trained import ModelSource, load_model_source

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _replace_folder(out: Path, build: Callable[[Path], object], *, force: bool) -> Path:
    """Build ``out`` atomically; an existing non-empty ``out`` is replaced only with ``force``."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ConfigError(f"{out} exists and is not empty; pass --force to replace it")
    return build_folder_atomically(out, build, replace=True)


def export_adapter(source: ModelSource, out: Path, *, force: bool = False) -> Path:
    """Copy the adapter folder (weights, ``adapter_config.json``) and save the tokenizer with its chat template."""
    if source.adapter is None:
        raise ConfigError(f"{source.base} has no adapter to export; pass a stage's run directory")

    def build(folder: Path) -> None:
        from lightalign.models.loading import load_tokenizer

        shutil.copytree(source.adapter, folder, dirs_exist_ok=True)
        load_tokenizer(source.base, revision=source.revision,
                       trust_remote_code=source.trust_remote_code).save_pretrained(folder)

    return _replace_folder(out, build, force=force)


def export_merged(source: ModelSource, out: Path, *, dtype: str = "fp32", force: bool = False) -> Path:
    """Merge the adapter into a full-precision copy of the base and save it as safetensors + tokenizer.

    The base is loaded in fp32, merged in fp32, then cast to ``dtype`` (``fp32``, ``bf16`` or ``fp16``). A reward
    stage's model (its trained score head included) loads with ``AutoModelForSequenceClassification``.
    """
    if source.adapter is None:
        raise ConfigError(f"{source.base} has no adapter to merge; pass a stage's run directory")
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype}: valid: {', '.join(DTYPES)}")

    def build(folder: Path) -> None:
        model, tokenizer = load_model_source(source, quantization=None, compute_dtype=torch.float32)
        if is_quantized(model):  # load_model_source(quantization=None) never quantises; keep it that way
            raise RuntimeError("refusing to merge into a quantised base")
        merged = model.merge_and_unload().to(DTYPES[dtype])
        if source.head == "causal-lm":  # a reward model (score head) does not generate
            # Stop at the end of an assistant turn, as lightalign's own generation does, not only at EOS.
            merged.generation_config.eos_token_id = stop_token_ids(tokenizer)
            merged.generation_config.pad_token_id = tokenizer.pad_token_id
        merged.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return _replace_folder(out, build, force=force)
