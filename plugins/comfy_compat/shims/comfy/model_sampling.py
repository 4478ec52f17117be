"""``comfy.model_sampling``: noise schedules (``ModelSampling*``) and prediction types (``EPS``...).

Packs combine one of each into a class (``class Advanced(ModelSamplingDiscrete, V_PREDICTION)``)
and install an instance with ``model.add_object_patch("model_sampling", instance)``; the core
samplers and the UNet call only what these classes define (``calculate_input``,
``calculate_denoised``, ``noise_scaling``, ``inverse_noise_scaling``, ``timestep``, ``sigma``,
``percent_to_sigma``, ``sigmas``, ``sigma_min`` / ``sigma_max``), with the reference's formulas.
One implementation serves both sides: the core model-sampling nodes build the same classes
(:mod:`plugins.core_nodes.sampling.model_sampling`). ``ModelSamplingDiscrete`` with ``EPS`` gives
exactly the sigmas of the core nodes' SD1/SDXL schedule (``plugins.core_nodes.sampling.schedules``).
"""

from __future__ import annotations

from plugins.core_nodes.sampling.model_sampling import (
    CONST,
    COSMOS_RFLOW,
    EDM,
    EPS,
    IMG_TO_IMG,
    IMG_TO_IMG_FLOW,
    V_PREDICTION,
    V_PREDICTION_DDPM,
    X0,
    ModelSamplingContinuousEDM,
    ModelSamplingContinuousV,
    ModelSamplingCosmosRFlow,
    ModelSamplingDiscrete,
    ModelSamplingDiscreteEDM,
    ModelSamplingDiscreteFlow,
    ModelSamplingFlux,
    StableCascadeSampling,
    flux_time_shift,
    rescale_zero_terminal_snr_sigmas,
    time_snr_shift,
)

__all__ = [
    "CONST",
    "COSMOS_RFLOW",
    "EDM",
    "EPS",
    "IMG_TO_IMG",
    "IMG_TO_IMG_FLOW",
    "V_PREDICTION",
    "V_PREDICTION_DDPM",
    "X0",
    "ModelSamplingContinuousEDM",
    "ModelSamplingContinuousV",
    "ModelSamplingCosmosRFlow",
    "ModelSamplingDiscrete",
    "ModelSamplingDiscreteEDM",
    "ModelSamplingDiscreteFlow",
    "ModelSamplingFlux",
    "StableCascadeSampling",
    "flux_time_shift",
    "rescale_zero_terminal_snr_sigmas",
    "time_snr_shift",
]
