"""Control-LoRA: a ControlNet stored as low-rank changes to the sampled MODEL's own UNet encoder.

The file (marked by a ``lora_controlnet`` tensor) holds the ControlNet's own layers in full
(``input_hint_block``, ``zero_convs``, ``middle_block_out``, usually norms and biases too) and,
for the layers shared with the UNet, ``<module>.up`` / ``<module>.down`` matrices: the layer's
weight is the UNet's plus ``up @ down`` (flattened to 2-D, reshaped back). The network can only be
built once the MODEL is known, so it is made in :meth:`ControlLora.pre_run` and dropped in
:meth:`ControlLora.cleanup`, as the reference does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from plugins.core_nodes.models.control import ControlBase, ControlNet
from plugins.core_nodes.models.controlnet import ControlNetModel

MARKER = "lora_controlnet"


def is_control_lora(sd: Mapping[str, Any]) -> bool:
    return MARKER in sd


def build_control_lora(control_weights: Mapping[str, torch.Tensor], unet: torch.nn.Module) -> ControlNetModel:
    """The ControlNet of ``control_weights`` over ``unet`` (our UNetModel, read, never changed)."""
    config = getattr(unet, "config", None)
    if config is None or "input_hint_block.0.weight" not in control_weights:
        raise ValueError("a Control-LoRA needs the sampled MODEL's UNet and its own hint encoder weights")
    with torch.device("meta"):
        network = ControlNetModel(config, control_weights["input_hint_block.0.weight"].shape[1])
    wanted = network.state_dict()
    base = unet.state_dict()
    weights: dict[str, torch.Tensor] = {k: base[k] for k in wanted if k in base and base[k].shape == wanted[k].shape}
    for key, value in control_weights.items():
        if key == MARKER or key.endswith(".down"):
            continue
        if key.endswith(".up"):
            module = key[: -len(".up")]
            target = f"{module}.weight"
            down = control_weights.get(f"{module}.down")
            if target not in weights or down is None:
                raise ValueError(f"Control-LoRA delta for {module} has no matching layer or no down matrix")
            original = weights[target]
            delta = torch.mm(value.flatten(start_dim=1).float(), down.flatten(start_dim=1).float())
            weights[target] = original.float() + delta.reshape(original.shape)
            continue
        weights[key] = value
    missing = sorted(set(wanted) - set(weights))
    if missing:
        raise ValueError(f"Control-LoRA leaves ControlNet weights unset: {', '.join(missing[:5])}")
    network.load_state_dict({k: v.float() for k, v in weights.items()}, strict=False, assign=True)
    return network.eval().requires_grad_(False)


class ControlLora(ControlNet):
    """A Control-LoRA (the reference's ``comfy.controlnet.ControlLora``)."""

    def __init__(
        self,
        control_weights: Mapping[str, torch.Tensor],
        global_average_pooling: bool = False,
        model_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(None, global_average_pooling=global_average_pooling)
        self.control_weights = control_weights

    def pre_run(self, model: Any, percent_to_timestep_function: Callable[[float], Any]) -> None:
        super().pre_run(model, percent_to_timestep_function)
        unet = getattr(model, "diffusion_model", None)
        if unet is None:
            raise ValueError("a Control-LoRA needs a MODEL with a UNet (diffusion_model)")
        self.control_model = build_control_lora(self.control_weights, unet)

    def copy(self) -> ControlLora:
        c = ControlLora(self.control_weights, global_average_pooling=self.global_average_pooling)
        self.copy_to(c)
        return c

    def cleanup(self) -> None:
        self.control_model = None
        super().cleanup()

    def get_models(self) -> list[Any]:
        return ControlBase.get_models(self)

    def inference_memory_requirements(self, dtype: torch.dtype) -> int:
        own = sum(t.numel() for t in self.control_weights.values()) * torch.tensor([], dtype=dtype).element_size()
        return own + ControlBase.inference_memory_requirements(self, dtype)
