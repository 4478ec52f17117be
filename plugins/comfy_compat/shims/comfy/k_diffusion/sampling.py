"""``comfy.k_diffusion.sampling``: the reference's sampler functions and schedule helpers.

Every ``sample_<name>(model, x, sigmas, extra_args=None, callback=None, disable=None, ...)``
calls ``model(x, sigma * s_in, **extra_args)`` (a denoiser) and runs the same arithmetic as the
core KSampler's sampler of that name (``plugins.core_nodes.sampling.kdiffusion``). These are
plain module attributes because packs replace them: the core samplers read
``default_noise_sampler`` and ``sample_<name>`` from this module at call time, so
``comfy.k_diffusion.sampling.default_noise_sampler = mine`` changes the noise of the KSampler
node's ancestral samplers, as it does in ComfyUI.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import trange

from plugins.core_nodes.sampling import kdiffusion as _k

# Packs reach these through this module (``sampling.torch``, ``sampling.math``, ``trange`` for
# their own sampler loops) and some swap them.
__all__ = [
    "BrownianTreeNoiseSampler",
    "append_dims",
    "append_zero",
    "default_noise_sampler",
    "ei_h_phi_1",
    "ei_h_phi_2",
    "get_ancestral_step",
    "get_sigmas_exponential",
    "get_sigmas_karras",
    "get_sigmas_polyexponential",
    "get_sigmas_vp",
    "half_log_snr_to_sigma",
    "math",
    "offset_first_sigma_for_snr",
    "sample_dpm_adaptive",
    "sample_dpm_fast",
    "sigma_to_half_log_snr",
    "to_d",
    "torch",
    "trange",
]

BrownianTreeNoiseSampler = _k.BrownianTreeNoiseSampler
append_dims = _k.append_dims
append_zero = _k.append_zero
default_noise_sampler = _k.default_noise_sampler
# The exponential-integrator helpers packs' own sampler loops call (RES4LYF-style samplers):
# half-log-SNR time under a model sampling (flow models included) and h * phi_k(h).
ei_h_phi_1 = _k.ei_h_phi_1
ei_h_phi_2 = _k.ei_h_phi_2
half_log_snr_to_sigma = _k.half_log_snr_to_sigma
offset_first_sigma_for_snr = _k.offset_first_sigma_for_snr
sigma_to_half_log_snr = _k.sigma_to_half_log_snr
get_ancestral_step = _k.get_ancestral_step
get_sigmas_exponential = _k.get_sigmas_exponential
get_sigmas_karras = _k.get_sigmas_karras
get_sigmas_polyexponential = _k.get_sigmas_polyexponential
get_sigmas_vp = _k.get_sigmas_vp
to_d = _k.to_d
sample_dpm_fast = _k.sample_dpm_fast
sample_dpm_adaptive = _k.sample_dpm_adaptive


def _install_samplers() -> None:
    """One ``sample_<name>`` attribute per sampler ksampler() resolves by name."""
    module = globals()
    for name, function in _k.SAMPLE_FUNCTIONS.items():
        module.setdefault(f"sample_{name}", function)
        __all__.append(f"sample_{name}")


_install_samplers()
