"""DPM-Solver (Lu et al. 2022, arXiv:2206.00927) in noise prediction: fixed-step and adaptive.

These two ignore the scheduler's sigmas except for the end points: ``dpm_fast`` spreads its own
steps uniformly in t = -log(sigma); ``dpm_adaptive`` picks step sizes with an error controller.
"""

from __future__ import annotations

import math

import torch

from .common import SamplerContext, ancestral_step


class _Solver:
    def __init__(self, ctx: SamplerContext) -> None:
        self.ctx = ctx

    @staticmethod
    def t(sigma: torch.Tensor) -> torch.Tensor:
        return -sigma.log()

    @staticmethod
    def sigma(t: torch.Tensor) -> torch.Tensor:
        return t.neg().exp()

    def ancestral_target(
        self, t: torch.Tensor, t_next: torch.Tensor, t_end: torch.Tensor, eta: float
    ) -> tuple[torch.Tensor, torch.Tensor | float]:
        """Where the deterministic step from ``t`` should land (never past ``t_end``) and the
        noise level that then brings it to ``t_next``; with ``eta`` 0, plainly ``t_next`` and 0."""
        if not eta:
            return t_next, 0.0
        sd, _ = ancestral_step(self.sigma(t), self.sigma(t_next), eta)
        t_down = torch.minimum(t_end, self.t(torch.as_tensor(sd)))
        return t_down, (self.sigma(t_next) ** 2 - self.sigma(t_down) ** 2) ** 0.5

    def eps(self, cache: dict[str, torch.Tensor], key: str, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if key not in cache:
            sigma = self.sigma(t)
            cache[key] = (x - self.ctx.denoise(x, sigma)) / sigma
        return cache[key]

    def step_1(
        self, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, cache: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        return x - self.sigma(t_next) * h.expm1() * eps

    def step_2(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        t_next: torch.Tensor,
        cache: dict[str, torch.Tensor],
        r1: float = 1 / 2,
    ) -> torch.Tensor:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        return (
            x
            - self.sigma(t_next) * h.expm1() * eps
            - self.sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)
        )

    def step_3(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        t_next: torch.Tensor,
        cache: dict[str, torch.Tensor],
        r1: float = 1 / 3,
        r2: float = 2 / 3,
    ) -> torch.Tensor:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        s2 = t + r2 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        u2 = (
            x
            - self.sigma(s2) * (r2 * h).expm1() * eps
            - self.sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps)
        )
        eps_r2 = self.eps(cache, "eps_r2", u2, s2)
        return (
            x
            - self.sigma(t_next) * h.expm1() * eps
            - self.sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)
        )


def _end_points(sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    sigma_min = sigmas[-1]
    if sigma_min == 0:
        sigma_min = sigmas[-2]
    return sigma_min, sigmas[0]


def sample_dpm_fast(
    ctx: SamplerContext, x: torch.Tensor, sigmas: torch.Tensor, eta: float = 0.0, s_noise: float = 1.0
) -> torch.Tensor:
    """Spend ``len(sigmas) - 1`` model calls on third-order steps (then a 2nd/1st-order tail)."""
    if len(sigmas) <= 1:
        return x
    sigma_min, sigma_max = _end_points(sigmas)
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError("sigma_min and sigma_max must not be 0")
    nfe = len(sigmas) - 1
    solver = _Solver(ctx)
    noise = ctx.noise_sampler(x)
    t_start, t_end = solver.t(sigma_max.clone()), solver.t(sigma_min.clone())
    m = math.floor(nfe / 3) + 1
    ts = torch.linspace(t_start, t_end, m + 1, device=x.device)
    orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
    for i, order in enumerate(orders):
        cache: dict[str, torch.Tensor] = {}
        t, t_next = ts[i], ts[i + 1]
        t_next_, su = solver.ancestral_target(t, t_next, t_end, eta)
        eps = solver.eps(cache, "eps", x, t)
        ctx.report(i, x - solver.sigma(t) * eps, x)
        if order == 1:
            x = solver.step_1(x, t, t_next_, cache)
        elif order == 2:
            x = solver.step_2(x, t, t_next_, cache)
        else:
            x = solver.step_3(x, t, t_next_, cache)
        x = x + su * s_noise * noise(solver.sigma(t), solver.sigma(t_next))
    return x


def sample_dpm_adaptive(
    ctx: SamplerContext,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    order: int = 3,
    rtol: float = 0.05,
    atol: float = 0.0078,
    h_init: float = 0.05,
    pcoeff: float = 0.0,
    icoeff: float = 1.0,
    dcoeff: float = 0.0,
    accept_safety: float = 0.81,
    eta: float = 0.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """Embedded DPM-Solver-12/23 pair with a PID step-size controller (accepts at error <= 1)."""
    if len(sigmas) <= 1:
        return x
    if order not in (2, 3):
        raise ValueError("order should be 2 or 3")
    sigma_min, sigma_max = _end_points(sigmas)
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError("sigma_min and sigma_max must not be 0")
    solver = _Solver(ctx)
    noise = ctx.noise_sampler(x)
    t_start, t_end = solver.t(sigma_max.clone()), solver.t(sigma_min.clone())
    forward = bool(t_end > t_start)
    if not forward and eta:
        raise ValueError("eta must be 0 for reverse sampling")
    controller = _PIDController(
        abs(h_init) * (1 if forward else -1), pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety
    )
    atol_t, rtol_t = torch.tensor(atol), torch.tensor(rtol)
    s = t_start
    x_prev = x
    steps = 0
    while (s < t_end - 1e-5) if forward else (s > t_end + 1e-5):
        cache: dict[str, torch.Tensor] = {}
        t = torch.minimum(t_end, s + controller.h) if forward else torch.maximum(t_end, s + controller.h)
        t_, su = solver.ancestral_target(s, t, t_end, eta)
        eps = solver.eps(cache, "eps", x, s)
        denoised = x - solver.sigma(s) * eps
        if order == 2:
            x_low = solver.step_1(x, s, t_, cache)
            x_high = solver.step_2(x, s, t_, cache)
        else:
            x_low = solver.step_2(x, s, t_, cache, r1=1 / 3)
            x_high = solver.step_3(x, s, t_, cache)
        delta = torch.maximum(atol_t, rtol_t * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        if controller.propose(error):
            x_prev = x_low
            x = x_high + su * s_noise * noise(solver.sigma(s), solver.sigma(t))
            s = t
        ctx.report(steps, denoised, x)
        steps += 1
    return x


class _PIDController:
    """PID control of the step size from the inverse local error (Söderlind 2003, with an atan limiter)."""

    def __init__(
        self, h: float, pcoeff: float, icoeff: float, dcoeff: float, order: float, accept_safety: float
    ) -> None:
        self.h: float | torch.Tensor = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.errs: list[float] = []

    def propose(self, error: torch.Tensor) -> bool:
        inv_error = 1 / (float(error) + 1e-8)
        if not self.errs:
            self.errs = [inv_error, inv_error, inv_error]
        self.errs[0] = inv_error
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2] = self.errs[1]
            self.errs[1] = self.errs[0]
        self.h = self.h * factor
        return accept
