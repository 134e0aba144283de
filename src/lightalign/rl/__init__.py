"""The pieces PPO and GRPO share, below both (``ppo/`` and ``grpo/`` import from here, never the reverse).

- :mod:`~lightalign.rl.masked`: means, variances and whitening over the real tokens of padded ``[B, T]`` tensors.
- :mod:`~lightalign.rl.objectives`: the KL estimators and the clipped policy-ratio objective.
- :mod:`~lightalign.rl.batches`: sampled answers after their prompts, and micro-batches of them.
- :mod:`~lightalign.rl.prompts`: which prompts a step samples from next (checkpointable).
- :mod:`~lightalign.rl.checkpoint`: atomic, resumable checkpoints of a training loop (trained tensors, optimiser,
  scheduler, every random generator, the loop's own state).

Import from the submodules; this package imports nothing itself.
"""
