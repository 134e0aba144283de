"""Masked statistics against numbers worked out by hand in the comments."""

from __future__ import annotations

import torch

from lightalign.rl.masked import masked_mean, masked_var, masked_whiten


def close(actual: torch.Tensor, expected: list | float) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=1e-5, rtol=1e-5)


def test_masked_mean_ignores_padding_even_when_it_is_nan():
    x = torch.tensor([[1.0, 3.0, float("nan")], [4.0, 100.0, 100.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    close(masked_mean(x, mask), (1 + 3 + 4) / 3)
    close(masked_mean(x, mask, dim=1), [2.0, 4.0])


def test_masked_whiten_uses_only_real_positions():
    # mean 2, unbiased variance ((1-2)^2 + 0 + (3-2)^2) / (3 - 1) = 1  ->  (x - 2) / 1
    x = torch.tensor([[1.0, 2.0], [3.0, 100.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    close(masked_whiten(x, mask), [[-1.0, 0.0], [1.0, 0.0]])
    # shift_mean=False only rescales: (x - 2) / 1 + 2 = x
    close(masked_whiten(x, mask, shift_mean=False), [[1.0, 2.0], [3.0, 0.0]])


def test_masked_var_is_bessel_corrected_unless_asked_not_to():
    # real values 1, 2, 3: mean 2, squared deviations 1 + 0 + 1 = 2 -> 2 / 2 = 1 unbiased, 2 / 3 biased
    x = torch.tensor([[1.0, 2.0, 3.0, 50.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    close(masked_var(x, mask), 1.0)
    close(masked_var(x, mask, unbiased=False), 2 / 3)
