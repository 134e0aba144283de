"""lightalign: lightweight QLoRA recipes for SFT, reward modelling, PPO and DPO."""

__version__ = "0.1.0"
