"""Deterministic samplers: solvers of the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma."""

from __future__ import annotations

import numpy as np
import torch

from .common import SamplerContext, half_log_snr, to_d


def sample_euler(ctx: SamplerContext, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    for i in range(len(sigmas) - 1):
        denoised = ctx.denoise(x, sigmas[i])
        ctx.report(i, denoised, x)
        x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
    return x


def sample_heun(ctx: SamplerContext, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Heun's second-order method (Karras et al. 2022, Algorithm 1); Euler for the step to 0."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = ctx.denoise(x, sigma)
        d = to_d(x, sigma, denoised)
        ctx.report(i, denoised, x)
        dt = sigma_next - sigma
        if sigma_next == 0:
            x = x + d * dt
            continue
        x_2 = x + d * dt
        d_2 = to_d(x_2, sigma_next, ctx.denoise(x_2, sigma_next))
        x = x + (d + d_2) / 2 * dt
    return x


def sample_heunpp2(ctx: SamplerContext, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Heun++: a three-point slope average weighted by sigma, falling back to Heun and Euler at the end."""
    s_end = sigmas[-1]
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = ctx.denoise(x, sigma)
        d = to_d(x, sigma, denoised)
        ctx.report(i, denoised, x)
        dt = sigma_next - sigma
        if sigma_next == s_end:
            x = x + d * dt
        elif sigmas[i + 2] == s_end:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigma_next, ctx.denoise(x_2, sigma_next))
            w2 = sigma_next / (2 * sigmas[0])
            x = x + (d * (1 - w2) + d_2 * w2) * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigma_next, ctx.denoise(x_2, sigma_next))
            x_3 = x_2 + d_2 * (sigmas[i + 2] - sigma_next)
            d_3 = to_d(x_3, sigmas[i + 2], ctx.denoise(x_3, sigmas[i + 2]))
            w = 3 * sigmas[0]
            w2 = sigma_next / w
            w3 = sigmas[i + 2] / w
            w1 = 1 - w2 - w3
            x = x + (w1 * d + w2 * d_2 + w3 * d_3) * dt
    return x


def sample_dpm_2(ctx: SamplerContext, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """DPM-Solver-2 style midpoint method: the slope is taken at the log-midpoint sigma."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = ctx.denoise(x, sigma)
        d = to_d(x, sigma, denoised)
        ctx.report(i, denoised, x)
        if sigma_next == 0:
            x = x + d * (sigma_next - sigma)
            continue
        sigma_mid = sigma.log().lerp(sigma_next.log(), 0.5).exp()
        x_2 = x + d * (sigma_mid - sigma)
        d_2 = to_d(x_2, sigma_mid, ctx.denoise(x_2, sigma_mid))
        x = x + d_2 * (sigma_next - sigma)
    return x


def _lms_coefficient(order: int, t: np.ndarray, i: int, j: int) -> float:
    """Integral over [t_i, t_(i+1)] of the j-th Lagrange basis polynomial on t_i, t_(i-1), ...

    The integrand is a polynomial of degree order - 1, so Gauss-Legendre with ``order`` nodes
    integrates it exactly.
    """
    nodes, weights = np.polynomial.legendre.leggauss(max(order, 1))
    a, b = float(t[i]), float(t[i + 1])
    taus = 0.5 * (b - a) * nodes + 0.5 * (b + a)
    prod = np.ones_like(taus)
    for k in range(order):
        if k != j:
            prod *= (taus - float(t[i - k])) / (float(t[i - j]) - float(t[i - k]))
    return float(0.5 * (b - a) * np.sum(weights * prod))


def sample_lms(ctx: SamplerContext, x: torch.Tensor, sigmas: torch.Tensor, order: int = 4) -> torch.Tensor:
    """Linear multistep (Adams-Bashforth in sigma) over the last ``order`` slopes."""
    sigmas_np = sigmas.detach().cpu().numpy().astype(np.float64)
    ds: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = ctx.denoise(x, sigmas[i])
        ds.append(to_d(x, sigmas[i], denoised))
        if len(ds) > order:
            ds.pop(0)
        ctx.report(i, denoised, x)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        cur_order = min(i + 1, order)
        coeffs = [_lms_coefficient(cur_order, sigmas_np, i, j) for j in range(cur_order)]
        x = x + sum(c * d for c, d in zip(coeffs, reversed(ds), strict=False))
    return x


def sample_dpmpp_2m(ctx: SamplerContext, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022): second-order multistep in log-sigma, data prediction."""
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = ctx.denoise(x, sigmas[i])
        ctx.report(i, denoised, x)
        t, t_next = half_log_snr(sigmas[i]), half_log_snr(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            denoised_d = denoised
        else:
            r = (t - half_log_snr(sigmas[i - 1])) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


def sample_ipndm(
    ctx: SamplerContext, x: torch.Tensor, sigmas: torch.Tensor, max_order: int = 4
) -> torch.Tensor:
    """Improved PNDM: Adams-Bashforth with fixed (equal-step) coefficients, warming up in order."""
    history: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        denoised = ctx.denoise(x, t_cur)
        ctx.report(i, denoised, x)
        d_cur = (x - denoised) / t_cur
        order = min(max_order, i + 1)
        if t_next == 0:
            x_next = denoised
        elif order == 1:
            x_next = x + (t_next - t_cur) * d_cur
        elif order == 2:
            x_next = x + (t_next - t_cur) * (3 * d_cur - history[-1]) / 2
        elif order == 3:
            x_next = x + (t_next - t_cur) * (23 * d_cur - 16 * history[-1] + 5 * history[-2]) / 12
        else:
            x_next = (
                x
                + (t_next - t_cur) * (55 * d_cur - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24
            )
        history = [*history, d_cur][-(max_order - 1) :]
        x = x_next
    return x


def sample_ipndm_v(
    ctx: SamplerContext, x: torch.Tensor, sigmas: torch.Tensor, max_order: int = 4
) -> torch.Tensor:
    """iPNDM with variable-step Adams-Bashforth coefficients."""
    ts = sigmas
    history: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        denoised = ctx.denoise(x, t_cur)
        ctx.report(i, denoised, x)
        d_cur = (x - denoised) / t_cur
        order = min(max_order, i + 1)
        if t_next == 0:
            x_next = denoised
        elif order == 1:
            x_next = x + (t_next - t_cur) * d_cur
        else:
            h0 = t_next - t_cur
            h1 = t_cur - ts[i - 1]
            if order == 2:
                c1 = (2 + h0 / h1) / 2
                c2 = -(h0 / h1) / 2
                slope = c1 * d_cur + c2 * history[-1]
            elif order == 3:
                h2 = ts[i - 1] - ts[i - 2]
                tmp = (1 - h0 / (3 * (h0 + h1)) * (h0 * (h0 + h1)) / (h1 * (h1 + h2))) / 2
                c1 = (2 + h0 / h1) / 2 + tmp
                c2 = -(h0 / h1) / 2 - (1 + h1 / h2) * tmp
                c3 = tmp * h1 / h2
                slope = c1 * d_cur + c2 * history[-1] + c3 * history[-2]
            else:
                h2 = ts[i - 1] - ts[i - 2]
                h3 = ts[i - 2] - ts[i - 3]
                tmp1 = (1 - h0 / (3 * (h0 + h1)) * (h0 * (h0 + h1)) / (h1 * (h1 + h2))) / 2
                tmp2 = (
                    ((1 - h0 / (3 * (h0 + h1))) / 2 + (1 - h0 / (2 * (h0 + h1))) * h0 / (6 * (h0 + h1 + h2)))
                    * (h0 * (h0 + h1) * (h0 + h1 + h2))
                    / (h1 * (h1 + h2) * (h1 + h2 + h3))
                )
                ratio = h1 * (h1 + h2) / (h2 * (h2 + h3))
                c1 = (2 + h0 / h1) / 2 + tmp1 + tmp2
                c2 = -(h0 / h1) / 2 - (1 + h1 / h2) * tmp1 - (1 + h1 / h2 + ratio) * tmp2
                c3 = tmp1 * h1 / h2 + (h1 / h2 + ratio * (1 + h2 / h3)) * tmp2
                c4 = -tmp2 * ratio * h1 / h2
                slope = c1 * d_cur + c2 * history[-1] + c3 * history[-2] + c4 * history[-3]
            x_next = x + (t_next - t_cur) * slope
        history = [*history, d_cur][-(max_order - 1) :]
        x = x_next
    return x


def _deis_coefficients(sigmas: torch.Tensor, max_order: int, n: int = 10000) -> list[list[float]]:
    """DEIS "tAB" coefficients: Lagrange polynomials integrated against the VP-SDE weight.

    The sigmas are mapped to the time of a VP-SDE fitted to sigma in [0.002, 80] (the EDM range);
    the weight integral is a Riemann sum over ``n`` points, as in the reference implementation,
    so that the coefficients (not just their exact values) agree.
    """
    eps_s, sigma_min, sigma_max = 1e-3, 0.002, 80.0
    beta_d = 2 * (np.log(sigma_min**2 + 1) / eps_s - np.log(sigma_max**2 + 1)) / (eps_s - 1)
    beta_min = np.log(sigma_max**2 + 1) - 0.5 * beta_d
    s = sigmas.detach().cpu().numpy().astype(np.float64)
    t_steps = (np.sqrt(beta_min**2 + 2 * beta_d * np.log(s**2 + 1)) - beta_min) / beta_d
    beta_0, beta_1 = beta_min, beta_d + beta_min
    coeffs: list[list[float]] = []
    for i in range(len(t_steps) - 1):
        t_cur, t_next = t_steps[i], t_steps[i + 1]
        order = min(i + 1, max_order)
        # The step to sigma 0 is always an Euler step; its weight integral would diverge.
        if order == 1 or s[i + 1] <= 0:
            coeffs.append([])
            continue
        taus = np.linspace(t_cur, t_next, n)
        dtau = (t_next - t_cur) / n
        prev_t = t_steps[[i - k for k in range(order)]]
        log_alpha = -0.5 * taus**2 * (beta_1 - beta_0) - taus * beta_0
        alpha = np.exp(log_alpha)
        d_log_alpha = -taus * (beta_1 - beta_0) - beta_0
        integrand = -0.5 * d_log_alpha / np.sqrt(alpha * (1 - alpha))
        row = []
        for j in range(order):
            poly = np.ones_like(taus)
            for k in range(order):
                if k != j:
                    poly *= (taus - prev_t[k]) / (prev_t[j] - prev_t[k])
            row.append(float(np.sum(integrand * poly) * dtau))
        coeffs.append(row)
    return coeffs


def sample_deis(
    ctx: SamplerContext, x: torch.Tensor, sigmas: torch.Tensor, max_order: int = 3
) -> torch.Tensor:
    """DEIS (Zhang & Chen 2022), exponential-integrator multistep in the tAB variant."""
    coeff_list = _deis_coefficients(sigmas, max_order)
    history: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        denoised = ctx.denoise(x, t_cur)
        ctx.report(i, denoised, x)
        d_cur = (x - denoised) / t_cur
        order = min(max_order, i + 1)
        if t_next <= 0:
            order = 1
        if order == 1:
            x_next = x + (t_next - t_cur) * d_cur
        else:
            c = coeff_list[i]
            x_next = x + c[0] * d_cur
            for k in range(1, order):
                x_next = x_next + c[k] * history[-k]
        history = [*history, d_cur][-(max_order - 1) :]
        x = x_next
    return x


def sample_gradient_estimation(
    ctx: SamplerContext, x: torch.Tensor, sigmas: torch.Tensor, ge_gamma: float = 2.0
) -> torch.Tensor:
    """Euler plus a correction from the change in slope (Permenter & Yuan, "gradient estimation")."""
    old_d = None
    for i in range(len(sigmas) - 1):
        denoised = ctx.denoise(x, sigmas[i])
        d = to_d(x, sigmas[i], denoised)
        ctx.report(i, denoised, x)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            x = x + d * dt
            if i >= 1:
                assert old_d is not None
                x = x + (ge_gamma - 1) * (d - old_d) * dt
        old_d = d
    return x
