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

from plugins.core_nodes.sampling import model_sampling as _core
from plugins.core_nodes.sampling.model_sampling import *  # noqa: F403 - the core module's names are this API

# Every public name of the core module but its own class-picking helper, which the reference's
# module does not have.
__all__ = [name for name in _core.__all__ if name != "model_sampling_class"]
del model_sampling_class  # noqa: F821 - bound by the star import above
