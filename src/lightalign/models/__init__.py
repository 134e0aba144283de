"""Base models, quantisation, LoRA adapters and precision: shared by every stage."""

from lightalign.models.adapters import LoraSettings, apply_lora, load_adapter_model, upcast_trainable
from lightalign.models.loading import Quantization, load_base_model, load_tokenizer, resolve_model_path
from lightalign.models.logprobs import install_chunked_lm_head
from lightalign.models.precision import Precision, resolve_precision

__all__ = [
    "LoraSettings",
    "Precision",
    "Quantization",
    "apply_lora",
    "install_chunked_lm_head",
    "load_adapter_model",
    "load_base_model",
    "load_tokenizer",
    "resolve_model_path",
    "resolve_precision",
    "upcast_trainable",
]
