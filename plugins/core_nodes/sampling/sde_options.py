"""The option functions the ER-SDE and SA-Solver sampler nodes hand to their samplers.

* ER-SDE's noise scaler decides how the solver trades drift for injected noise: the solver's own
  default (``x (e^(x^0.3) + 10)``), or ``x^(eta + 1)`` for the classical reverse-time SDE
  (``eta`` 1) down to the probability-flow ODE (``eta`` 0).
* SA-Solver's tau function gives the stochasticity ``tau`` at a sigma: ``eta`` inside a sigma
  interval, 0 (deterministic) outside.
* SA-Solver's "simple order 2" weights: the closed-form two-step predictor and one-step corrector
  of the paper's appendix, instead of the general Lagrange integration.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

NoiseScaler = Callable[[torch.Tensor], torch.Tensor]


def er_sde_default_scaler(x: torch.Tensor) -> torch.Tensor:
    """ER-SDE's own noise scaler (Cui et al. 2023)."""
    return x * ((x**0.3).exp() + 10.0)


def reverse_time_scaler(eta: float) -> NoiseScaler:
    """``x^(eta + 1)``: the reverse-time SDE at ``eta`` 1, the ODE at ``eta`` 0."""

    def scaler(x: torch.Tensor) -> torch.Tensor:
        return x ** (eta + 1)

    return scaler


def tau_interval(
    start_sigma: float, end_sigma: float, eta: float = 1.0
) -> Callable[[torch.Tensor | float], float]:
    """SA-Solver's stochasticity: ``eta`` for sigmas in [end_sigma, start_sigma], else 0."""

    def tau(sigma: torch.Tensor | float) -> float:
        if eta <= 0:
            return 0.0
        value = float(sigma)
        return eta if start_sigma >= value >= end_sigma else 0.0

    return tau


def simple_order2_coefficients(
    sigma_next: torch.Tensor,
    lambdas: torch.Tensor,
    lambda_s: torch.Tensor,
    lambda_t: torch.Tensor,
    tau: float,
    corrector: bool,
) -> torch.Tensor:
    """The two SA-Solver weights (oldest estimate first) of the simplified order-2 scheme."""
    k = 1 + tau**2
    h = lambda_t - lambda_s
    alpha_t = sigma_next * lambda_t.exp()
    whole = alpha_t * (-h * k).expm1().neg()
    if corrector:
        newest = alpha_t * (0.5 * k * h)
        oldest = whole - newest
    else:
        oldest = alpha_t * (0.5 * k * h**2) / (lambdas[-2] - lambda_s)
        newest = whole - oldest
    return torch.stack([oldest, newest])
