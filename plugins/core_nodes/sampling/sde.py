"""Reverse-SDE solvers: DPM-Solver++ SDE family (Brownian-tree noise), ER-SDE, SEEDS, SA-Solver.

They step in half-log-SNR time, which the model sampling defines (``ctx.half_log_snr``: a
rectified flow has alpha = 1 - sigma, not 1), and start a flow schedule just below sigma 1
(``ctx.snr_sigmas``), where lambda is finite, as the reference's do. The Brownian tree spans the
caller's sigmas, before that move.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from .brownian import BrownianTreeNoiseSampler
from .common import SamplerContext, ancestral_step, ei_h_phi_1, ei_h_phi_2
from .noise import NoiseSampler
from .sde_options import er_sde_default_scaler, simple_order2_coefficients


def _brownian(ctx: SamplerContext, x: torch.Tensor, sigmas: torch.Tensor, cpu: bool) -> NoiseSampler:
    if ctx.noise_sampler_override is not None:
        return ctx.noise_sampler_override
    sigma_min, sigma_max = sigmas[sigmas > 0].min(), sigmas.max()
    return BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed=ctx.seed, cpu=cpu)


def _ancestral_ei_step(
    x: torch.Tensor,
    denoised: torch.Tensor,
    noise: NoiseSampler,
    sigma: torch.Tensor,
    lambda_s: torch.Tensor,
    sigma_to: torch.Tensor,
    lambda_to: torch.Tensor,
    eta: float,
    s_noise: float,
) -> torch.Tensor:
    """First-order data-prediction step from ``sigma`` (half-log-SNR ``lambda_s``) to
    ``sigma_to`` (``lambda_to``).

    The deterministic part goes to the ancestral sigma_down, then Brownian noise of size
    sigma_up refills the variance; both stages of DPM-Solver++ SDE take this step.
    """
    alpha_s = sigma * lambda_s.exp()
    alpha_to = sigma_to * lambda_to.exp()
    sd, su = ancestral_step(lambda_s.neg().exp(), lambda_to.neg().exp(), eta)
    h_ = torch.as_tensor(sd).log().neg() - lambda_s
    x = (alpha_to / alpha_s) * (-h_).exp() * x - alpha_to * (-h_).expm1() * denoised
    if eta > 0 and s_noise > 0:
        x = x + alpha_to * noise(sigma, sigma_to) * s_noise * su
    return x


class _MultistepStep(NamedTuple):
    """The first-order part of a DPM-Solver++(2M/3M) SDE step and what its corrections reuse."""

    x: torch.Tensor
    h: torch.Tensor
    h_eta: torch.Tensor
    alpha_t: torch.Tensor


def _multistep_first_order(
    ctx: SamplerContext,
    x: torch.Tensor,
    denoised: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    eta: float,
) -> _MultistepStep:
    """2M and 3M share this step exactly; their multistep corrections then add to ``x``."""
    lambda_s, lambda_t = ctx.half_log_snr(sigma), ctx.half_log_snr(sigma_next)
    h = lambda_t - lambda_s
    h_eta = h * (eta + 1)
    alpha_t = sigma_next * lambda_t.exp()
    x = sigma_next / sigma * (-h * eta).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
    return _MultistepStep(x, h, h_eta, alpha_t)


def _multistep_noise(
    noise: NoiseSampler,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    h: torch.Tensor,
    eta: float,
    s_noise: float,
) -> torch.Tensor:
    """The fresh noise a 2M/3M SDE step adds, so the marginal at ``sigma_next`` stays right."""
    return noise(sigma, sigma_next) * sigma_next * (-2 * h * eta).expm1().neg().sqrt() * s_noise


def sample_dpmpp_sde(
    ctx: SamplerContext,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    eta: float = 1.0,
    s_noise: float = 1.0,
    r: float = 0.5,
    cpu_tree: bool = True,
) -> torch.Tensor:
    """DPM-Solver++ (stochastic, single-step second order) with an intermediate point at ratio ``r``."""
    if len(sigmas) <= 1:
        return x
    noise = _brownian(ctx, x, sigmas, cpu_tree)
    sigmas = ctx.snr_sigmas(sigmas)
    s_noise = s_noise * ctx.noise_scale  # ModelNoiseScale: the noise the model was trained on
    fac = 1 / (2 * r)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = ctx.denoise(x, sigma)
        ctx.report(i, denoised, x)
        if sigma_next == 0:
            x = denoised
            continue
        lambda_s, lambda_t = ctx.half_log_snr(sigma), ctx.half_log_snr(sigma_next)
        h = lambda_t - lambda_s
        lambda_s_1 = lambda_s + r * h
        sigma_s_1 = ctx.sigma_at(lambda_s_1)
        x_2 = _ancestral_ei_step(x, denoised, noise, sigma, lambda_s, sigma_s_1, lambda_s_1, eta, s_noise)
        denoised_2 = ctx.denoise(x_2, sigma_s_1)
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = _ancestral_ei_step(x, denoised_d, noise, sigma, lambda_s, sigma_next, lambda_t, eta, s_noise)
    return x


def sample_dpmpp_2m_sde(
    ctx: SamplerContext,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    eta: float = 1.0,
    s_noise: float = 1.0,
    solver_type: str = "midpoint",
    cpu_tree: bool = True,
) -> torch.Tensor:
    """DPM-Solver++(2M) SDE; ``solver_type`` picks the midpoint or Heun form of the 2nd-order term."""
    if len(sigmas) <= 1:
        return x
    if solver_type not in ("heun", "midpoint"):
        raise ValueError("solver_type must be 'heun' or 'midpoint'")
    noise = _brownian(ctx, x, sigmas, cpu_tree)
    sigmas = ctx.snr_sigmas(sigmas)
    s_noise = s_noise * ctx.noise_scale  # ModelNoiseScale: the noise the model was trained on
    old_denoised: torch.Tensor | None = None
    h: torch.Tensor | None = None
    h_last: torch.Tensor | None = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = ctx.denoise(x, sigma)
        ctx.report(i, denoised, x)
        if sigma_next == 0:
            x = denoised
        else:
            x, h, h_eta, alpha_t = _multistep_first_order(ctx, x, denoised, sigma, sigma_next, eta)
            if old_denoised is not None:
                assert h_last is not None
                r = h_last / h
                if solver_type == "heun":
                    coef = (-h_eta).expm1().neg() / (-h_eta) + 1
                    x = x + alpha_t * coef * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * alpha_t * (-h_eta).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta > 0 and s_noise > 0:
                x = x + _multistep_noise(noise, sigma, sigma_next, h, eta, s_noise)
        old_denoised = denoised
        h_last = h
    return x


def sample_dpmpp_3m_sde(
    ctx: SamplerContext,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    eta: float = 1.0,
    s_noise: float = 1.0,
    cpu_tree: bool = True,
) -> torch.Tensor:
    """DPM-Solver++(3M) SDE: third-order multistep from the last three x0 estimates."""
    if len(sigmas) <= 1:
        return x
    noise = _brownian(ctx, x, sigmas, cpu_tree)
    sigmas = ctx.snr_sigmas(sigmas)
    s_noise = s_noise * ctx.noise_scale  # ModelNoiseScale: the noise the model was trained on
    denoised_1: torch.Tensor | None = None
    denoised_2: torch.Tensor | None = None
    h: torch.Tensor | None = None
    h_1: torch.Tensor | None = None
    h_2: torch.Tensor | None = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = ctx.denoise(x, sigma)
        ctx.report(i, denoised, x)
        if sigma_next == 0:
            x = denoised
        else:
            x, h, h_eta, alpha_t = _multistep_first_order(ctx, x, denoised, sigma, sigma_next, eta)
            if h_2 is not None:
                assert h_1 is not None and denoised_1 is not None and denoised_2 is not None
                r0 = h_1 / h
                r1 = h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + (alpha_t * phi_2) * d1 - (alpha_t * phi_3) * d2
            elif h_1 is not None:
                assert denoised_1 is not None
                r = h_1 / h
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + (alpha_t * phi_2) * ((denoised - denoised_1) / r)
            if eta > 0 and s_noise > 0:
                x = x + _multistep_noise(noise, sigma, sigma_next, h, eta, s_noise)
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


def sample_er_sde(
    ctx: SamplerContext,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    s_noise: float = 1.0,
    max_stage: int = 3,
    noise_scaler: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Extended reverse-time SDE solver, VP form, up to third stage (Cui et al. 2023, arXiv:2309.06169).

    ``noise_scaler`` replaces the solver's own (see :mod:`.sde_options`)."""
    noise = ctx.noise_sampler(x)
    s_noise = s_noise * ctx.noise_scale  # ModelNoiseScale: the noise the model was trained on
    scaler = noise_scaler if noise_scaler is not None else er_sde_default_scaler

    points = 200.0
    point_index = torch.arange(0, points, dtype=torch.float32, device=x.device)
    sigmas = ctx.snr_sigmas(sigmas)
    er_lambdas = ctx.half_log_snr(sigmas).neg().exp()  # sigma / alpha
    old_denoised: torch.Tensor | None = None
    old_denoised_d: torch.Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = ctx.denoise(x, sigmas[i])
        ctx.report(i, denoised, x)
        stage = min(max_stage, i + 1)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lam_s, lam_t = er_lambdas[i], er_lambdas[i + 1]
            alpha_s = sigmas[i] / lam_s
            alpha_t = sigmas[i + 1] / lam_t
            r = scaler(lam_t) / scaler(lam_s)
            x = alpha_t / alpha_s * r * x + alpha_t * (1 - r) * denoised
            if stage >= 2:
                assert old_denoised is not None
                dt = lam_t - lam_s
                step = -dt / points
                pos = lam_t + point_index * step
                scaled = scaler(pos)
                s = torch.sum(1 / scaled) * step
                denoised_d = (denoised - old_denoised) / (lam_s - er_lambdas[i - 1])
                x = x + alpha_t * (dt + s * scaler(lam_t)) * denoised_d
                if stage >= 3:
                    assert old_denoised_d is not None
                    s_u = torch.sum((pos - lam_s) / scaled) * step
                    denoised_u = (denoised_d - old_denoised_d) / ((lam_s - er_lambdas[i - 2]) / 2)
                    x = x + alpha_t * ((dt**2) / 2 + s_u * scaler(lam_t)) * denoised_u
                old_denoised_d = denoised_d
            if s_noise > 0:
                spread = (lam_t**2 - lam_s**2 * r**2).sqrt().nan_to_num(nan=0.0)
                x = x + alpha_t * noise(sigmas[i], sigmas[i + 1]) * s_noise * spread
        old_denoised = denoised
    return x


def _carry_noise(sde_noise: torch.Tensor, segment: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
    """SEEDS' noise at the next stage: the previous stage's noise decayed over ``segment`` (a
    negative log-SNR span times eta) plus fresh noise filling the variance the decay removed."""
    sde_noise = sde_noise * segment.exp()
    return sde_noise + segment.mul(2).expm1().neg().sqrt() * fresh


def sample_seeds_2(
    ctx: SamplerContext,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    eta: float = 1.0,
    s_noise: float = 1.0,
    r: float = 0.5,
    solver_type: str = "phi_1",
) -> torch.Tensor:
    """SEEDS-2 (Gonzalez et al. 2023, arXiv:2305.14267), data prediction, two stages."""
    if solver_type not in ("phi_1", "phi_2"):
        raise ValueError("solver_type must be 'phi_1' or 'phi_2'")
    noise = ctx.noise_sampler(x)
    s_noise = s_noise * ctx.noise_scale  # ModelNoiseScale: the noise the model was trained on
    inject = eta > 0 and s_noise > 0
    sigmas = ctx.snr_sigmas(sigmas)
    fac = 1 / (2 * r)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = ctx.denoise(x, sigma)
        ctx.report(i, denoised, x)
        if sigma_next == 0:
            x = denoised
            continue
        lambda_s, lambda_t = ctx.half_log_snr(sigma), ctx.half_log_snr(sigma_next)
        h = lambda_t - lambda_s
        h_eta = h * (eta + 1)
        lambda_s_1 = torch.lerp(lambda_s, lambda_t, r)
        sigma_s_1 = ctx.sigma_at(lambda_s_1)
        alpha_s_1 = sigma_s_1 * lambda_s_1.exp()
        alpha_t = sigma_next * lambda_t.exp()

        x_2 = sigma_s_1 / sigma * (-r * h * eta).exp() * x - alpha_s_1 * ei_h_phi_1(-r * h_eta) * denoised
        if inject:
            sde_noise = (-2 * r * h * eta).expm1().neg().sqrt() * noise(sigma, sigma_s_1)
            x_2 = x_2 + sde_noise * sigma_s_1 * s_noise
        denoised_2 = ctx.denoise(x_2, sigma_s_1)

        if solver_type == "phi_1":
            denoised_d = torch.lerp(denoised, denoised_2, fac)
            x = sigma_next / sigma * (-h * eta).exp() * x - alpha_t * ei_h_phi_1(-h_eta) * denoised_d
        else:
            b2 = ei_h_phi_2(-h_eta) / r
            b1 = ei_h_phi_1(-h_eta) - b2
            x = sigma_next / sigma * (-h * eta).exp() * x - alpha_t * (b1 * denoised + b2 * denoised_2)
        if inject:
            sde_noise = _carry_noise(sde_noise, (r - 1) * h * eta, noise(sigma_s_1, sigma_next))
            x = x + sde_noise * sigma_next * s_noise
    return x


def sample_seeds_3(
    ctx: SamplerContext,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    eta: float = 1.0,
    s_noise: float = 1.0,
    r_1: float = 1.0 / 3,
    r_2: float = 2.0 / 3,
) -> torch.Tensor:
    """SEEDS-3: three stages at log-SNR fractions ``r_1`` and ``r_2`` of each step."""
    noise = ctx.noise_sampler(x)
    s_noise = s_noise * ctx.noise_scale  # ModelNoiseScale: the noise the model was trained on
    inject = eta > 0 and s_noise > 0
    sigmas = ctx.snr_sigmas(sigmas)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = ctx.denoise(x, sigma)
        ctx.report(i, denoised, x)
        if sigma_next == 0:
            x = denoised
            continue
        lambda_s, lambda_t = ctx.half_log_snr(sigma), ctx.half_log_snr(sigma_next)
        h = lambda_t - lambda_s
        h_eta = h * (eta + 1)
        lambda_s_1 = torch.lerp(lambda_s, lambda_t, r_1)
        lambda_s_2 = torch.lerp(lambda_s, lambda_t, r_2)
        sigma_s_1, sigma_s_2 = ctx.sigma_at(lambda_s_1), ctx.sigma_at(lambda_s_2)
        alpha_s_1 = sigma_s_1 * lambda_s_1.exp()
        alpha_s_2 = sigma_s_2 * lambda_s_2.exp()
        alpha_t = sigma_next * lambda_t.exp()

        x_2 = sigma_s_1 / sigma * (-r_1 * h * eta).exp() * x - alpha_s_1 * ei_h_phi_1(-r_1 * h_eta) * denoised
        if inject:
            sde_noise = (-2 * r_1 * h * eta).expm1().neg().sqrt() * noise(sigma, sigma_s_1)
            x_2 = x_2 + sde_noise * sigma_s_1 * s_noise
        denoised_2 = ctx.denoise(x_2, sigma_s_1)

        a3_2 = r_2 / r_1 * ei_h_phi_2(-r_2 * h_eta)
        a3_1 = ei_h_phi_1(-r_2 * h_eta) - a3_2
        x_3 = sigma_s_2 / sigma * (-r_2 * h * eta).exp() * x - alpha_s_2 * (
            a3_1 * denoised + a3_2 * denoised_2
        )
        if inject:
            sde_noise = _carry_noise(sde_noise, (r_1 - r_2) * h * eta, noise(sigma_s_1, sigma_s_2))
            x_3 = x_3 + sde_noise * sigma_s_2 * s_noise
        denoised_3 = ctx.denoise(x_3, sigma_s_2)

        b3 = ei_h_phi_2(-h_eta) / r_2
        b1 = ei_h_phi_1(-h_eta) - b3
        x = sigma_next / sigma * (-h * eta).exp() * x - alpha_t * (b1 * denoised + b3 * denoised_3)
        if inject:
            sde_noise = _carry_noise(sde_noise, (r_2 - 1) * h * eta, noise(sigma_s_2, sigma_next))
            x = x + sde_noise * sigma_next * s_noise
    return x


def _exponential_moments(s: torch.Tensor, t: torch.Tensor, order: int, tau: float) -> torch.Tensor:
    """I_p = k * integral_s^t exp(k (u - t)) u^p du for p < order, where k = 1 + tau^2.

    Integration by parts gives I_p = t^p - s^p exp(-k (t - s)) - (p / k) I_(p-1).
    """
    k = 1 + tau**2
    decay = (-k * (t - s)).exp()
    moments: list[torch.Tensor] = []
    for p in range(order):
        value = t**p - s**p * decay
        if p > 0:
            value = value - (p / k) * moments[-1]
        moments.append(value)
    return torch.stack(moments)


def _sa_coefficients(
    sigma_next: torch.Tensor,
    lambdas: torch.Tensor,
    lambda_s: torch.Tensor,
    lambda_t: torch.Tensor,
    tau: float,
) -> torch.Tensor:
    """Stochastic Adams weights of the x0 estimates at ``lambdas`` for a step lambda_s -> lambda_t.

    Solving V^T b = I (V the Vandermonde matrix of ``lambdas``) integrates each Lagrange basis
    polynomial against the exponential weight.
    """
    n = lambdas.shape[0]
    moments = _exponential_moments(lambda_s, lambda_t, n, tau)
    vander_t = torch.vander(lambdas, n, increasing=True).T
    weights = torch.linalg.solve(vander_t, moments)
    return sigma_next * lambda_t.exp() * weights


def sample_sa_solver(
    ctx: SamplerContext,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    s_noise: float = 1.0,
    predictor_order: int = 3,
    corrector_order: int = 4,
    use_pece: bool = False,
    tau_func: Callable[[torch.Tensor], float] | None = None,
    simple_order_2: bool = False,
) -> torch.Tensor:
    """SA-Solver (Xue et al. 2023, arXiv:2309.05019): stochastic Adams predictor-corrector.

    By default the noise is on (tau = 1) only for sigmas between the 20% and 80% points of the
    model's schedule. ``simple_order_2`` uses the closed-form weights for two-estimate steps.
    """

    def coefficients(
        sigma_next: torch.Tensor,
        lams: torch.Tensor,
        lam_s: torch.Tensor,
        lam_t: torch.Tensor,
        tau: float,
        corrector: bool,
    ) -> torch.Tensor:
        if simple_order_2 and lams.shape[0] == 2:
            return simple_order2_coefficients(sigma_next, lams, lam_s, lam_t, tau, corrector)
        return _sa_coefficients(sigma_next, lams, lam_s, lam_t, tau)

    if len(sigmas) <= 1:
        return x
    noise_sampler = ctx.noise_sampler(x)
    s_noise = s_noise * ctx.noise_scale  # ModelNoiseScale: the noise the model was trained on
    sigmas = ctx.snr_sigmas(sigmas)
    lambdas = ctx.half_log_snr(sigmas)
    if tau_func is None:
        start_sigma = ctx.model_sampling.percent_to_sigma(0.2)
        end_sigma = ctx.model_sampling.percent_to_sigma(0.8)

        def tau_func(sigma: torch.Tensor) -> float:
            value = float(sigma)
            return 1.0 if start_sigma >= value >= end_sigma else 0.0

    max_order = max(predictor_order, corrector_order)
    x_pred = x
    h: torch.Tensor | float = 0.0
    tau_t = 0.0
    noise: torch.Tensor | float = 0.0
    history: list[torch.Tensor] = []
    lower_order_to_end = sigmas[-1].item() == 0

    for i in range(len(sigmas) - 1):
        denoised = ctx.denoise(x_pred, sigmas[i])
        ctx.report(i, denoised, x_pred)
        history = [*history, denoised][-max_order:]

        pred_order = min(predictor_order, len(history))
        corr_order = (
            0 if i == 0 or (sigmas[i + 1] == 0 and not use_pece) else min(corrector_order, len(history))
        )
        if lower_order_to_end:
            pred_order = min(pred_order, len(sigmas) - 2 - i)
            corr_order = min(corr_order, len(sigmas) - 1 - i)

        if corr_order == 0:
            x = x_pred
        else:
            b = coefficients(
                sigmas[i], lambdas[i - corr_order + 1 : i + 1], lambdas[i - 1], lambdas[i], tau_t, True
            )
            stacked = torch.stack(history[-corr_order:], dim=1)
            corr = torch.tensordot(stacked, b, dims=([1], [0]))
            x = sigmas[i] / sigmas[i - 1] * (-(tau_t**2) * h).exp() * x + corr
            if tau_t > 0 and s_noise > 0:
                x = x + noise
            if use_pece:
                denoised = ctx.denoise(x, sigmas[i])
                history[-1] = denoised

        if sigmas[i + 1] == 0:
            x_pred = denoised
        else:
            tau_t = tau_func(sigmas[i + 1])
            b = coefficients(
                sigmas[i + 1], lambdas[i - pred_order + 1 : i + 1], lambdas[i], lambdas[i + 1], tau_t, False
            )
            stacked = torch.stack(history[-pred_order:], dim=1)
            pred = torch.tensordot(stacked, b, dims=([1], [0]))
            h = lambdas[i + 1] - lambdas[i]
            x_pred = sigmas[i + 1] / sigmas[i] * (-(tau_t**2) * h).exp() * x + pred
            if tau_t > 0 and s_noise > 0:
                spread = (-2 * tau_t**2 * h).expm1().neg().sqrt()
                noise = noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * spread * s_noise
                x_pred = x_pred + noise
    return x_pred
