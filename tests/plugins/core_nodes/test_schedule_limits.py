"""The sigma-schedule nodes at the edges of their inputs: the reference's values where it gives
values, and an error naming the input where its formula cannot be evaluated."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from plugins.core_nodes.nodes import custom_sampler as cs

from .node_helpers import messages, run_prompt, start

# (node, inputs changed from its defaults, the words the error must contain)
_REFUSED = [
    ("KarrasScheduler", {"rho": 0.0}, "rho must be > 0 for the karras schedule"),
    ("KarrasScheduler", {"rho": 0.001}, "rho 0.001 is too small for the karras schedule"),
    ("ExponentialScheduler", {"sigma_min": 0.0}, "sigma_min must be > 0 for the exponential schedule"),
    ("ExponentialScheduler", {"sigma_max": 0.0}, "sigma_max must be > 0 for the exponential schedule"),
    ("PolyexponentialScheduler", {"sigma_min": 0.0}, "sigma_min must be > 0 for the polyexponential schedule"),
    ("PolyexponentialScheduler", {"sigma_max": 0.0}, "sigma_max must be > 0 for the polyexponential schedule"),
]


def _prompt(node: str, changed: dict[str, float]) -> dict[str, Any]:
    inputs: dict[str, Any] = {"steps": 1, "sigma_max": 14.614642, "sigma_min": 0.0291675, **changed}
    if node != "ExponentialScheduler":
        inputs.setdefault("rho", 7.0 if node == "KarrasScheduler" else 1.0)
    return {
        "1": {"class_type": node, "inputs": inputs},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
    }


async def test_impossible_schedules_name_the_input(comfy_server: Any) -> None:
    server = await start(comfy_server)
    for node, changed, words in _REFUSED:
        frames = await run_prompt(server, _prompt(node, changed))
        (error,) = messages(frames, "execution_error")
        assert error["node_type"] == node
        assert error["exception_type"].endswith("ValueError")
        assert words in error["exception_message"], (node, changed, error["exception_message"])
    # The defaults still run.
    frames = await run_prompt(server, _prompt("KarrasScheduler", {}))
    assert not messages(frames, "execution_error")


@pytest.mark.parametrize("steps", [1, 4])
def test_edges_the_reference_evaluates_still_give_its_values(steps: int) -> None:
    ramp = torch.linspace(0, 1, steps)
    # Karras with sigma_min 0: 0 ** (1 / rho) is 0, so the ramp ends at 0 before the appended 0.
    (karras,) = cs.KarrasScheduler().get_sigmas(steps, 10.0, 0.0, 7.0)
    expected = (10.0 ** (1 / 7) + ramp * (0.0 - 10.0 ** (1 / 7))) ** 7.0
    assert torch.allclose(karras, torch.cat([expected, torch.zeros(1)]))
    # Polyexponential with rho 0: the ramp is all ones (0 ** 0 is 1), every sigma is sigma_max.
    (poly,) = cs.PolyexponentialScheduler().get_sigmas(steps, 10.0, 0.5, 0.0)
    assert torch.allclose(poly, torch.tensor([10.0] * steps + [0.0]))
    # Exponential with equal ends: a flat schedule.
    (flat,) = cs.ExponentialScheduler().get_sigmas(steps, 2.0, 2.0)
    assert torch.allclose(flat, torch.tensor([2.0] * steps + [0.0]))
