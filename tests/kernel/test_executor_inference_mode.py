"""Prompts run under ``torch.inference_mode()``, as the reference runs them.

Packs call their own torch modules without ``no_grad`` and hand the outputs to nodes that turn
them into images (``.numpy()``), which fails on a tensor that requires grad.
"""

from __future__ import annotations

from typing import Any

from kernel import hookimpl
from tests.kernel.exec_helpers import connect, executed_ui, of_type, run


class TorchProbe:
    """Runs a small module the way a pack's model node does, and reports the autograd state."""

    RETURN_TYPES = ()
    FUNCTION = "probe"
    OUTPUT_NODE = True
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"seed": ("INT", {"default": 0})}}

    def probe(self, seed: int) -> dict[str, Any]:
        import torch

        torch.manual_seed(seed)
        layer = torch.nn.Linear(3, 2)
        out = layer(torch.ones(1, 3))
        array = out.numpy()  # raises "Can't call numpy() on Tensor that requires grad" outside the mode
        return {
            "ui": {
                "inference_mode": [torch.is_inference_mode_enabled()],
                "requires_grad": [out.requires_grad],
                "values": [float(v) for v in array.reshape(-1)],
            }
        }


class _Pack:
    @staticmethod
    @hookimpl
    def register_nodes(register: Any) -> None:
        register("TorchProbe", TorchProbe)


async def test_nodes_run_in_inference_mode(comfy_server: Any) -> None:
    server = await comfy_server(plugins=[("torchprobe", _Pack)])
    client_id, ws = await connect(server)
    messages = await run(server, ws, client_id, {"1": {"class_type": "TorchProbe", "inputs": {"seed": 3}}})
    await ws.close()
    assert not of_type(messages, "execution_error"), of_type(messages, "execution_error")
    ui = executed_ui(messages)["1"]
    assert ui["inference_mode"] == [True] and ui["requires_grad"] == [False]
    assert len(ui["values"]) == 2
