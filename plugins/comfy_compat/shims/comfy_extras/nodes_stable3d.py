"""``comfy_extras.nodes_stable3d``: ``camera_embeddings`` (Easy-Use imports it) and the module's node classes."""

from __future__ import annotations

import torch
from comfy_extras._exports import module_attributes


def camera_embeddings(elevation: float, azimuth: float) -> torch.Tensor:
    """The ``[1, 1, 4]`` camera vector Zero123-style models are conditioned on.

    (polar angle relative to the horizon, sin and cos of the azimuth, a fixed 90 degree camera
    distance term), angles given in degrees and returned in radians where they are angles.
    """
    elevation_t = torch.as_tensor([elevation])
    azimuth_t = torch.deg2rad(torch.as_tensor([azimuth]))
    polar = torch.deg2rad(-elevation_t)  # Zero123's polar angle is 90 - elevation, taken from 90
    distance = torch.deg2rad(torch.full_like(elevation_t, 90))
    return torch.stack([polar, torch.sin(azimuth_t), torch.cos(azimuth_t), distance], dim=-1).unsqueeze(1)


__getattr__, __dir__ = module_attributes(__name__, {"camera_embeddings": camera_embeddings})
