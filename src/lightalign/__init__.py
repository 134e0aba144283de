"""lightalign: lightweight QLoRA recipes for SFT, reward modelling, PPO and DPO."""

from lightalign import lean_imports

__version__ = "0.1.0"

lean_imports.install()  # before anything imports bitsandbytes (peft, transformers' 4-bit loading)
