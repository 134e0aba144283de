"""The reusable core of GRPO (critic-free RL, G answers per prompt); the loop itself is ``recipes/grpo.py``.

- :mod:`~lightalign.grpo.advantages`: advantages within each prompt's group of answers (GRPO, RLOO, Dr. GRPO).
- :mod:`~lightalign.grpo.losses`: the clipped policy-ratio loss with a KL term, aggregated over tokens three ways.
- :mod:`~lightalign.grpo.rewards`: a weighted sum of reward callables, each part checked and kept for logging.

What PPO shares (masked statistics, KL estimators, the clipped objective) lives below both, in
:mod:`lightalign.rl`. Import from the submodules: this package imports nothing itself.
"""
