"""Load what a stage trained (its base + its adapter) for use outside training: chat, rank, export.

A *model source* is any of:

- a stage's run directory ``DIR`` (``DIR/config.yaml`` names the base model and its quantisation,
  ``DIR/adapter/`` holds the adapter), or that ``adapter/`` folder itself;
- a bare PEFT adapter folder (its ``adapter_config.json`` names the base);
- a base model: ``lightalign:tiny-random``, a Hub id or a local Hugging Face folder (e.g. a merged export).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lightalign.errors import ModelNotFoundError
from lightalign.models.loading import Quantization, load_base_model, load_tokenizer
from lightalign.models.precision import resolve_precision
from lightalign.rundir import ADAPTER, CONFIG, read_manifest

ADAPTER_CONFIG = "adapter_config.json"


@dataclass
class ModelSource:
    """A base model, optionally with a trained adapter, and how the stage that trained it loaded the base."""

    base: str
    adapter: Path | None = None
    quantization: Quantization | None = None  # as trained; None = full precision
    revision: str | None = None
    trust_remote_code: bool = False
    stage: str | None = None
    head: str = "causal-lm"  # "score" for a reward stage
    precision: str = "auto"  # trainer.precision: sets the dtype 4-bit layers compute in

    def describe(self) -> str:
        trained = f"{self.stage or 'adapter'} adapter {self.adapter} on " if self.adapter else ""
        bits = "4-bit " if self.quantization and self.quantization.load_in_4bit else ""
        return f"{trained}{bits}{self.base}"


def resolve_model_source(source: str | Path) -> ModelSource:
    """Work out what ``source`` names (see the module docstring), reading configs only; nothing is loaded."""
    path = Path(source).expanduser()
    run_dir = path.parent if path.name == ADAPTER and (path / ADAPTER_CONFIG).is_file() else path
    adapter = next((p for p in (run_dir / ADAPTER, path) if (p / ADAPTER_CONFIG).is_file()), None)
    if (run_dir / CONFIG).is_file() and adapter is not None:
        cfg = OmegaConf.load(run_dir / CONFIG)
        quant = Quantization(**OmegaConf.to_container(cfg.quant)) if "quant" in cfg else None
        stage = cfg.get("stage") or (read_manifest(run_dir) or {}).get("stage")
        return ModelSource(
            base=cfg.model.name_or_path,
            adapter=adapter,
            quantization=quant if quant and quant.load_in_4bit else None,
            revision=cfg.model.get("revision"),
            trust_remote_code=bool(cfg.model.get("trust_remote_code", False)),
            stage=stage,
            head="score" if stage == "reward" else "causal-lm",
            precision=str(OmegaConf.select(cfg, "trainer.precision", default="auto")),
        )
    if adapter is not None:  # a bare adapter: PEFT recorded the base it was trained on
        config = json.loads((adapter / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        head = "score" if config.get("task_type") == "SEQ_CLS" else "causal-lm"
        return ModelSource(base=config["base_model_name_or_path"], adapter=adapter, head=head)
    if path.is_dir() and not (path / "config.json").is_file():
        raise ModelNotFoundError(f"{path} holds no model: not a run directory ({CONFIG} + {ADAPTER}/), "
                                 f"an adapter ({ADAPTER_CONFIG}) or a model folder (config.json)")
    return ModelSource(base=str(source))


def load_model_source(
    source: ModelSource,
    *,
    quantization: Quantization | None | str = "as-trained",
    compute_dtype: torch.dtype | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The base (quantised as trained unless ``quantization`` says otherwise) with its adapter, in eval mode.

    The tokenizer is the base's, with the pad token and chat template the stage trained with
    (:func:`~lightalign.models.load_tokenizer`). ``compute_dtype`` defaults to the stage's precision.
    """
    quant = source.quantization if quantization == "as-trained" else quantization
    compute_dtype = compute_dtype or resolve_precision(source.precision).compute_dtype
    tokenizer = load_tokenizer(source.base, revision=source.revision, trust_remote_code=source.trust_remote_code)
    model = load_base_model(source.base, quant, compute_dtype=compute_dtype, head=source.head,  # type: ignore[arg-type]
                            revision=source.revision, trust_remote_code=source.trust_remote_code)
    if source.adapter is not None:
        model = PeftModel.from_pretrained(model, source.adapter, is_trainable=False)
    model.eval()
    return model, tokenizer
