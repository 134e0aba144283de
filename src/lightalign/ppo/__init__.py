"""The reusable core of lightalign's own PPO (TRL >= 1.13 has none); the loop itself is ``recipes/ppo.py``.

- :mod:`~lightalign.ppo.advantages`: per-token rewards with a KL penalty, GAE, masked statistics.
- :mod:`~lightalign.ppo.losses`: clipped policy and value losses, entropy, explained variance.
- :mod:`~lightalign.ppo.kl_control`: fixed and adaptive KL coefficients (checkpointable).
- :mod:`~lightalign.ppo.roles`: policy, reference, value and reward as adapters on one shared base.

Import from the submodules: this package imports nothing itself, so the maths modules load without
transformers and peft.
"""
