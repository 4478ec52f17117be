"""The torch device entry of ``GET /system_stats``, once torch is loaded."""

from __future__ import annotations

import sys
from typing import Any


def device_stats(force_cpu: bool = False) -> dict[str, Any] | None:
    """The compute device as the reference reports it, or None while torch is not imported.

    Importing torch here would stall the event loop for seconds (and ``/system_stats`` is what
    clients poll first), so until a prompt has loaded torch the core CPU entry stands. With
    ``force_cpu`` (``--cpu``) the models run on the CPU, so the core CPU entry stands too.
    """
    if force_cpu:
        return None
    torch = sys.modules.get("torch")
    if torch is None or not hasattr(torch, "cuda"):
        return None
    if not torch.cuda.is_available():
        return None
    index = torch.cuda.current_device()
    free, total = torch.cuda.mem_get_info(index)
    stats = torch.cuda.memory_stats(index)
    reserved = int(stats.get("reserved_bytes.all.current", 0))
    active = int(stats.get("active_bytes.all.current", 0))
    name = torch.cuda.get_device_name(index)
    return {
        "devices": [
            {
                "name": f"cuda:{index} {name}",
                "type": "cuda",
                "index": index,
                "vram_total": total,
                "vram_free": free + reserved - active,
                "torch_vram_total": reserved,
                "torch_vram_free": reserved - active,
            }
        ]
    }
