"""Where a model comes from and how it is loaded: a recipe's own base (from its config), or what a stage trained
(its base + its adapter) for chat, rank, export, rankings and the reward model.

A *model source* is any of:

- the base a recipe's config names (``model.*``, ``quant.*``, ``trainer.precision``): :meth:`ModelSource.of_settings`;
- a stage's output (:class:`~lightalign.rundir.StageRun`): its run directory ``DIR`` (``DIR/config.yaml`` names
  the base model and its quantisation, ``DIR/adapter/`` holds the adapter), that ``adapter/`` folder itself, or a
  bare PEFT adapter folder (its ``adapter_config.json`` names the base): :meth:`ModelSource.of_run`;
- a base model: ``lightalign:tiny-random``, a Hub id or a local Hugging Face folder (e.g. a merged export).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lightalign.config.schema import ModelSettings
from lightalign.models.loading import Quantization, load_base_model, load_tokenizer
from lightalign.models.precision import resolve_precision
from lightalign.rundir import StageRun

Head = Literal["causal-lm", "score"]


@dataclass
class ModelSource:
    """A base model, optionally with a trained adapter, and how to load the base (as the stage that trained it did)."""

    base: str
    adapter: Path | None = None
    quantization: Quantization | None = None  # 4-bit settings; None = full precision
    revision: str | None = None
    trust_remote_code: bool = False
    stage: str | None = None
    head: Head = "causal-lm"  # "score" for a reward stage
    precision: str = "auto"  # trainer.precision: sets the dtype 4-bit layers compute in
    attn_implementation: str | None = "sdpa"

    @classmethod
    def of_settings(cls, model: ModelSettings, quantization: Quantization | None, precision: str = "auto", *,
                    head: Head = "causal-lm") -> ModelSource:
        """The base a config names: ``ModelSource.of_settings(run.model, run.quant, run.trainer.precision)``."""
        return cls(
            base=model.name_or_path,
            quantization=quantization if quantization and quantization.load_in_4bit else None,
            revision=model.revision,
            trust_remote_code=model.trust_remote_code,
            head=head,
            precision=precision,
            attn_implementation=model.attn_implementation,
        )

    @classmethod
    def of_run(cls, run: StageRun) -> ModelSource:
        """What a stage trained: the base and quantisation its ``config.yaml`` names, with its adapter. A bare
        adapter folder has no config: its base is the one PEFT recorded, loaded in full precision."""
        head = "score" if run.stage == "reward" or run.adapter_config.get("task_type") == "SEQ_CLS" else "causal-lm"
        if run.config is None:
            return cls(base=run.adapter_config["base_model_name_or_path"], adapter=run.adapter_dir, head=head)
        quant = run.setting("quant")
        source = cls.of_settings(ModelSettings(**run.setting("model")), Quantization(**quant) if quant else None,
                                 str(run.setting("trainer.precision", "auto")), head=head)
        return replace(source, adapter=run.adapter_dir, stage=run.stage)

    def describe(self) -> str:
        trained = f"{self.stage or 'adapter'} adapter {self.adapter} on " if self.adapter else ""
        bits = "4-bit " if self.quantization and self.quantization.load_in_4bit else ""
        return f"{trained}{bits}{self.base}"

    def load_tokenizer(self) -> PreTrainedTokenizerBase:
        """The base's tokenizer, with the pad token and chat template every stage trains with
        (:func:`~lightalign.models.load_tokenizer`)."""
        return load_tokenizer(self.base, revision=self.revision, trust_remote_code=self.trust_remote_code)

    def load_base(self, *, quantization: Quantization | None | str = "as-trained",
                  compute_dtype: torch.dtype | None = None) -> PreTrainedModel:
        """The base model alone (no adapter), in training mode: quantised as set unless ``quantization`` says
        otherwise, computing in ``compute_dtype`` (default: the one ``precision`` resolves to here)."""
        return load_base_model(
            self.base,
            self.quantization if quantization == "as-trained" else quantization,  # type: ignore[arg-type]
            compute_dtype=compute_dtype or resolve_precision(self.precision).compute_dtype,
            head=self.head,
            revision=self.revision,
            trust_remote_code=self.trust_remote_code,
            attn_implementation=self.attn_implementation,
        )


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
    """The base (quantised as trained unless ``quantization`` says otherwise) with its adapter, in eval mode, and
    its tokenizer (:meth:`ModelSource.load_base`, :meth:`ModelSource.load_tokenizer`)."""
    tokenizer = source.load_tokenizer()
    model = source.load_base(quantization=quantization, compute_dtype=compute_dtype)
    if source.adapter is not None:
        model = PeftModel.from_pretrained(model, source.adapter, is_trainable=False)
    model.eval()
    return model, tokenizer
