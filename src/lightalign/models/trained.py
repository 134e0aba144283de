"""Load what a stage trained (its base + its adapter) for use outside training: chat, rank, export, rankings, the
reward model.

A *model source* is any of:

- a stage's output (:class:`~lightalign.rundir.StageRun`): its run directory ``DIR`` (``DIR/config.yaml`` names
  the base model and its quantisation, ``DIR/adapter/`` holds the adapter), that ``adapter/`` folder itself, or a
  bare PEFT adapter folder (its ``adapter_config.json`` names the base);
- a base model: ``lightalign:tiny-random``, a Hub id or a local Hugging Face folder (e.g. a merged export).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lightalign.models.loading import Quantization, load_base_model, load_tokenizer
from lightalign.models.precision import resolve_precision
from lightalign.rundir import StageRun


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
    attn_implementation: str | None = "sdpa"

    @classmethod
    def of_run(cls, run: StageRun) -> ModelSource:
        """What a stage trained: the base and quantisation its ``config.yaml`` names, with its adapter. A bare
        adapter folder has no config: its base is the one PEFT recorded, loaded in full precision."""
        head = "score" if run.stage == "reward" or run.adapter_config.get("task_type") == "SEQ_CLS" else "causal-lm"
        if run.config is None:
            return cls(base=run.adapter_config["base_model_name_or_path"], adapter=run.adapter_dir, head=head)
        quant = Quantization(**run.setting("quant")) if run.setting("quant") else None
        return cls(
            base=run.setting("model.name_or_path"),
            adapter=run.adapter_dir,
            quantization=quant if quant and quant.load_in_4bit else None,
            revision=run.setting("model.revision"),
            trust_remote_code=bool(run.setting("model.trust_remote_code", False)),
            stage=run.stage,
            head=head,
            precision=str(run.setting("trainer.precision", "auto")),
            attn_implementation=run.setting("model.attn_implementation", "sdpa"),
        )

    def describe(self) -> str:
        trained = f"{self.stage or 'adapter'} adapter {self.adapter} on " if self.adapter else ""
        bits = "4-bit " if self.quantization and self.quantization.load_in_4bit else ""
        return f"{trained}{bits}{self.base}"


def resolve_model_source(source: str | Path) -> ModelSource:
    """Work out what ``source`` names (see the module docstring), reading configs only; nothing is loaded.

    Raises:
        ConfigError: ``source`` is a folder that is neither a model folder (``config.json``) nor a stage's output.
    """
    path = Path(source).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        return ModelSource.of_run(StageRun.open(path))
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
                            revision=source.revision, trust_remote_code=source.trust_remote_code,
                            attn_implementation=source.attn_implementation)
    if source.adapter is not None:
        model = PeftModel.from_pretrained(model, source.adapter, is_trainable=False)
    model.eval()
    return model, tokenizer
