"""UniPC (Zhao et al. 2023, arXiv:2302.04867): unified predictor-corrector, multistep, data prediction.

Written in the variance-preserving frame: alpha = 1 / sqrt(1 + sigma^2), std = sigma * alpha,
lambda = log(alpha / std) = -log(sigma). ``variant`` picks B(h) = h ("bh1") or expm1(h) ("bh2").
"""

from __future__ import annotations

import torch

from .common import SamplerContext


def _log_alpha(sigma: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.log(1 / ((sigma * sigma) + 1))


def _alpha(sigma: torch.Tensor) -> torch.Tensor:
    return torch.exp(_log_alpha(sigma))


def _std(sigma: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(1.0 - torch.exp(2.0 * _log_alpha(sigma)))


def _lambda(sigma: torch.Tensor) -> torch.Tensor:
    log_alpha = _log_alpha(sigma)
    return log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))


class _UniPC:
    def __init__(self, ctx: SamplerContext, variant: str) -> None:
        if variant not in ("bh1", "bh2"):
            raise ValueError(f"unknown UniPC variant {variant!r}")
        self.ctx = ctx
        self.variant = variant

    def data_prediction(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        # x lives in the VP frame; the denoiser wants the k-diffusion frame x * sqrt(1 + sigma^2).
        x_k = x * ((sigma**2 + 1.0) ** 0.5)
        eps = (x_k - self.ctx.denoise(x_k, sigma)) / sigma
        return (x - _std(sigma) * eps) / _alpha(sigma)

    def update(
        self,
        x: torch.Tensor,
        model_prev: list[torch.Tensor],
        t_prev: list[torch.Tensor],
        t: torch.Tensor,
        order: int,
        use_corrector: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        t_prev_0 = t_prev[-1]
        lambda_prev_0 = _lambda(t_prev_0)
        lambda_t = _lambda(t)
        model_prev_0 = model_prev[-1]
        sigma_prev_0, sigma_t = _std(t_prev_0), _std(t)
        alpha_t = torch.exp(_log_alpha(t))
        h = lambda_t - lambda_prev_0

        rks: list[torch.Tensor | float] = []
        d1s: list[torch.Tensor] = []
        for i in range(1, order):
            rk = (_lambda(t_prev[-(i + 1)]) - lambda_prev_0) / h
            rks.append(rk)
            d1s.append((model_prev[-(i + 1)] - model_prev_0) / rk)
        rks.append(1.0)
        rks_t = torch.tensor([float(r) for r in rks])

        hh = -h
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        b_h = hh if self.variant == "bh1" else torch.expm1(hh)
        rows = []
        bs = []
        factorial = 1
        for i in range(1, order + 1):
            rows.append(torch.pow(rks_t, i - 1))
            bs.append(float(h_phi_k * factorial / b_h))
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        r_mat = torch.stack(rows)
        b = torch.tensor(bs)

        d1_stack = torch.stack(d1s, dim=1) if d1s else None
        x_t_ = sigma_t / sigma_prev_0 * x - alpha_t * h_phi_1 * model_prev_0
        if d1_stack is not None:
            rhos_p = torch.tensor([0.5]) if order == 2 else torch.linalg.solve(r_mat[:-1, :-1], b[:-1])
            pred_res = torch.einsum("k,bk...->b...", rhos_p, d1_stack)
        else:
            pred_res = 0
        x_t = x_t_ - alpha_t * b_h * pred_res

        model_t = None
        if use_corrector:
            rhos_c = torch.tensor([0.5]) if order == 1 else torch.linalg.solve(r_mat, b)
            model_t = self.data_prediction(x_t, t)
            corr_res = torch.einsum("k,bk...->b...", rhos_c[:-1], d1_stack) if d1_stack is not None else 0
            x_t = x_t_ - alpha_t * b_h * (corr_res + rhos_c[-1] * (model_t - model_prev_0))
        return x_t, model_t


def sample_unipc(
    ctx: SamplerContext, x: torch.Tensor, sigmas: torch.Tensor, variant: str = "bh1"
) -> torch.Tensor:
    timesteps = sigmas.clone()
    # Zero noise has infinite log-SNR; the last target becomes a tiny sigma instead.
    if timesteps[-1] == 0:
        timesteps[-1] = 0.001
    x = x / torch.sqrt(1.0 + timesteps[0] ** 2.0)
    steps = len(timesteps) - 1
    order = min(3, len(timesteps) - 2)
    if steps < order or order < 1:
        raise ValueError("uni_pc needs at least 2 steps")
    solver = _UniPC(ctx, variant)

    t = timesteps[0]
    t_prev = [t]
    model_prev = [solver.data_prediction(x, t)]
    ctx.report(0, model_prev[-1], x)
    for step in range(1, order):
        t = timesteps[step]
        x, model_x = solver.update(x, model_prev, t_prev, t, step, use_corrector=True)
        if model_x is None:
            model_x = solver.data_prediction(x, t)
        t_prev.append(t)
        model_prev.append(model_x)
        ctx.report(step, model_prev[-1], x)
    for step in range(order, steps + 1):
        t = timesteps[step]
        step_order = min(order, steps + 1 - step)
        x, model_x = solver.update(x, model_prev, t_prev, t, step_order, use_corrector=step != steps)
        t_prev = [*t_prev[1:], t] if len(t_prev) == order else [*t_prev, t]
        model_prev = (
            [*model_prev[1:], model_prev[-1]] if len(model_prev) == order else [*model_prev, model_prev[-1]]
        )
        if step < steps:
            if model_x is None:
                model_x = solver.data_prediction(x, t)
            model_prev[-1] = model_x
        ctx.report(step, model_prev[-1], x)
    return x / _alpha(timesteps[-1])
