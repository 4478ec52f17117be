"""Discrete-time model sampling (SD1.x / SDXL) and the sigma schedulers KSampler offers.

Everything here is plain torch arithmetic on small 1-D tensors; the results must equal the
reference server's schedules to float32 precision, so the orders of operations follow the
well-known formulas (Karras et al. 2022 for ``karras``, a log-linear ramp for ``exponential``,
timestep-space interpolation for ``normal``/``sgm_uniform`` and so on).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .betadist import beta_ppf
from .model_sampling import EPS, V_PREDICTION, DiscreteTable, betas_to_sigmas, linear_betas
from .names import SCHEDULER_NAMES as SCHEDULER_NAMES  # re-exported: callers import it from here

# These samplers take one step more than asked and then drop the next-to-last sigma, because
# their final step is a plain Euler step from the last non-zero sigma.
DISCARD_PENULTIMATE_SIGMA_SAMPLERS: frozenset[str] = frozenset(
    {"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"}
)


class ModelSamplingDiscrete(DiscreteTable, EPS):
    """The 1000-step DDPM noise schedule, seen as a table of sigmas.

    ``prediction`` is ``"eps"`` (SD1.x, SDXL) or ``"v"`` (SD2.x 768-v and friends); it only changes
    how a raw network output becomes a denoised latent (:meth:`calculate_denoised`). The table
    lookups and the eps / v formulas are the model samplings' (:mod:`.model_sampling`).
    """

    def __init__(
        self,
        linear_start: float = 0.00085,
        linear_end: float = 0.012,
        timesteps: int = 1000,
        prediction: str = "eps",
        sigma_data: float = 1.0,
    ) -> None:
        if prediction not in ("eps", "v"):
            raise ValueError(f"unknown prediction type {prediction!r}")
        self.prediction = prediction
        self.sigma_data = sigma_data
        sigmas = betas_to_sigmas(linear_betas(linear_start, linear_end, timesteps))
        self.sigmas: torch.Tensor = sigmas.float()
        self.log_sigmas: torch.Tensor = sigmas.log().float()

    def calculate_denoised(
        self, sigma: torch.Tensor, model_output: torch.Tensor, x: torch.Tensor
    ) -> torch.Tensor:
        read = V_PREDICTION.calculate_denoised if self.prediction == "v" else EPS.calculate_denoised
        return read(self, sigma, model_output, x)


def _append_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_zeros([1])])


def require_positive_sigmas(schedule: str, sigma_min: float, sigma_max: float) -> None:
    """The log-spaced schedules take logarithms of both ends: a zero or negative end is refused
    by name, where the bare ``math.log`` would only say "math domain error". (NaN passes, as it
    does through ``math.log``.)"""
    for name, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
        if value <= 0:
            raise ValueError(f"{name} must be > 0 for the {schedule} schedule (got {value})")


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    # The ends are taken to the power 1 / rho: rho 0 would be a bare division by zero, and a tiny
    # rho a float overflow; both are named here. Zero sigmas are fine (0 ** (1 / rho) is 0).
    if rho == 0:
        raise ValueError("rho must be > 0 for the karras schedule (got 0)")
    ramp = torch.linspace(0, 1, n)
    try:
        min_inv_rho = sigma_min ** (1 / rho)
        max_inv_rho = sigma_max ** (1 / rho)
    except OverflowError:
        raise ValueError(
            f"rho {rho} is too small for the karras schedule: sigma ** (1 / rho) overflows "
            f"(sigma_min {sigma_min}, sigma_max {sigma_max})"
        ) from None
    return _append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def exponential_sigmas(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    require_positive_sigmas("exponential", sigma_min, sigma_max)
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def simple_scheduler(ms: ModelSamplingDiscrete, steps: int) -> torch.Tensor:
    stride = len(ms.sigmas) / steps
    sigs = [float(ms.sigmas[-(1 + int(i * stride))]) for i in range(steps)]
    return torch.FloatTensor(sigs + [0.0])


def ddim_uniform_scheduler(ms: ModelSamplingDiscrete, steps: int) -> torch.Tensor:
    stride = max(len(ms.sigmas) // steps, 1)
    sigs = [float(ms.sigmas[i]) for i in range(1, len(ms.sigmas), stride)]
    return torch.FloatTensor(sigs[::-1] + [0.0])


def normal_scheduler(ms: ModelSamplingDiscrete, steps: int, sgm: bool = False) -> torch.Tensor:
    start = ms.timestep(ms.sigma_max)
    end = ms.timestep(ms.sigma_min)
    append_zero = True
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1)[:-1]
    else:
        # A schedule whose last sigma is already ~0 gets no extra zero appended.
        if math.isclose(float(ms.sigma(end)), 0, abs_tol=0.00001):
            steps += 1
            append_zero = False
        timesteps = torch.linspace(start, end, steps)
    sigs = [float(ms.sigma(ts)) for ts in timesteps]
    if append_zero:
        sigs.append(0.0)
    return torch.FloatTensor(sigs)


def beta_scheduler(
    ms: ModelSamplingDiscrete, steps: int, alpha: float = 0.6, beta: float = 0.6
) -> torch.Tensor:
    """Timesteps placed at quantiles of a Beta(alpha, beta) distribution (arXiv:2407.12173)."""
    total = len(ms.sigmas) - 1
    sigs: list[float] = []
    last: float | None = None
    for i in range(steps):
        # Same arithmetic as a numpy linspace(0, 1, steps, endpoint=False) ramp.
        q = 1.0 - i * (1.0 / steps)
        t = float(round(beta_ppf(q, alpha, beta) * total))
        if t != last:
            sigs.append(float(ms.sigmas[int(t)]))
        last = t
    return torch.FloatTensor(sigs + [0.0])


def linear_quadratic_scheduler(
    ms: ModelSamplingDiscrete, steps: int, threshold_noise: float = 0.025, linear_steps: int | None = None
) -> torch.Tensor:
    """Linear then quadratic in "1 - sigma/sigma_max" (the Mochi/Genmo schedule)."""
    if steps == 1:
        schedule = [1.0, 0.0]
    else:
        if linear_steps is None:
            linear_steps = steps // 2
        linear = [i * threshold_noise / linear_steps for i in range(linear_steps)]
        step_diff = linear_steps - threshold_noise * steps
        quad_steps = steps - linear_steps
        quad_coef = step_diff / (linear_steps * quad_steps**2)
        lin_coef = threshold_noise / linear_steps - 2 * step_diff / (quad_steps**2)
        const = quad_coef * (linear_steps**2)
        quad = [quad_coef * (i**2) + lin_coef * i + const for i in range(linear_steps, steps)]
        schedule = [1.0 - x for x in linear + quad + [1.0]]
    return torch.FloatTensor(schedule) * ms.sigma_max


def kl_optimal_scheduler(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Sigmas equally spaced in arctan(sigma) (arXiv:2404.14507, "Align Your Steps")."""
    ramp = torch.arange(n, dtype=torch.float).div_(n - 1)
    sigmas = ramp.new_zeros(n + 1)
    sigmas[:-1] = (ramp * math.atan(sigma_min) + (1 - ramp) * math.atan(sigma_max)).tan_()
    return sigmas


_HANDLERS: dict[str, Callable[[ModelSamplingDiscrete, int], torch.Tensor]] = {
    "simple": simple_scheduler,
    "sgm_uniform": lambda ms, steps: normal_scheduler(ms, steps, sgm=True),
    "karras": lambda ms, steps: karras_sigmas(steps, float(ms.sigma_min), float(ms.sigma_max)),
    "exponential": lambda ms, steps: exponential_sigmas(steps, float(ms.sigma_min), float(ms.sigma_max)),
    "ddim_uniform": ddim_uniform_scheduler,
    "beta": beta_scheduler,
    "normal": normal_scheduler,
    "linear_quadratic": linear_quadratic_scheduler,
    "kl_optimal": lambda ms, steps: kl_optimal_scheduler(steps, float(ms.sigma_min), float(ms.sigma_max)),
}


def calculate_sigmas(ms: ModelSamplingDiscrete, scheduler: str, steps: int) -> torch.Tensor:
    """The full schedule (``steps`` + 1 sigmas ending in 0) for one scheduler name."""
    try:
        handler = _HANDLERS[scheduler]
    except KeyError:
        raise ValueError(f"unknown scheduler {scheduler!r}") from None
    return handler(ms, steps)


def ksampler_sigmas(
    ms: ModelSamplingDiscrete, scheduler: str, sampler: str, steps: int, denoise: float = 1.0
) -> torch.Tensor:
    """The sigmas KSampler hands its sampler, with the denoise and discard-penultimate rules.

    With ``denoise`` < 1 the schedule is computed for ``int(steps / denoise)`` steps and only the
    last ``steps + 1`` sigmas are kept, so img2img starts part-way down the same curve.
    """

    def full(n: int) -> torch.Tensor:
        discard = sampler in DISCARD_PENULTIMATE_SIGMA_SAMPLERS
        sigmas = calculate_sigmas(ms, scheduler, n + 1 if discard else n)
        if discard:
            sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
        return sigmas

    if denoise is None or denoise > 0.9999:
        return full(steps)
    if denoise <= 0.0:
        return torch.FloatTensor([])
    return full(int(steps / denoise))[-(steps + 1) :]
