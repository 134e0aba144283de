"""KL coefficient controllers: β in ``reward = score - β * KL(policy || reference)``.

Both controllers share one interface (``.value``, ``.update(current_kl, n_steps)``, ``state_dict()``,
``load_state_dict()``) so a recipe can pick one from config and checkpoint it with the optimiser.
"""

from __future__ import annotations

from typing import Any


class FixedKLController:
    """A constant β. ``update`` does nothing; it exists so recipes need no branch."""

    def __init__(self, coef: float) -> None:
        self.value = float(coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Ignore the measurement: the coefficient is fixed."""

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Proportional controller of Ziegler et al. 2019 ("Fine-tuning language models from human preferences").

    After each PPO batch, ``error = clip(current_kl / target - 1, -0.2, 0.2)`` and
    ``β <- β * (1 + error * n_steps / horizon)``: β grows while the policy drifts further from the
    reference than ``target`` and shrinks while it stays closer; the clip bounds how fast it can move.

    Args:
        init_coef: starting β (e.g. 0.05 or 0.2).
        target: the wanted KL, in the same unit as the ``current_kl`` passed to :meth:`update`; use the
            per-sequence KL summed over tokens and averaged over the batch (the old TRL used 6 nats).
        horizon: how many samples the controller takes to close most of the error (e.g. 10000).

    Example:
        >>> ctl = AdaptiveKLController(init_coef=0.1, target=6.0, horizon=10000)
        >>> ctl.update(current_kl=12.0, n_steps=100)   # error clipped to +0.2
        >>> round(ctl.value, 6)
        0.1002
    """

    def __init__(self, init_coef: float, target: float, horizon: float) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be > 0, got target={target}, horizon={horizon}")
        self.value = float(init_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Adjust β from the KL measured on the last batch of ``n_steps`` samples."""
        proportional_error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Only β is state; target and horizon come from the (possibly edited) config of the resumed run.
        self.value = float(state["value"])
