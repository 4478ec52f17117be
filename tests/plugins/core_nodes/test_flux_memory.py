"""Memory for Flux-dev-sized models (issue 22): the model manager's sizes of fp8 storage, and the
partial load (layers that do not fit stay on the offload device and are copied per call).

This host has no GPU, so devices are stood in for: full-size Flux-dev layouts live on the meta
device (shapes only) for the sizes and the plan; the meta device is the compute device for the
placement itself (a layer left behind on the CPU that did not stream would fail to run there);
``cpu:0`` (a name the manager tells apart from ``cpu``, the tensors staying in host memory) is
the compute device where the numbers of a partially loaded model are compared with the whole one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from plugins.core_nodes.models.flux import FLUX_DEV, FluxTransformer, RMSNorm, build_flux
from plugins.core_nodes.models.flux_family import FP8_STORAGE
from plugins.core_nodes.models.manager import ModelManager, module_bytes, own_bytes, plan_partial
from plugins.core_nodes.models.operations import CastLinear, CastOperations, streaming_class

from .flux_reference import tiny_flux_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GIB = 1 << 30


def _full_size(weight_dtype: str) -> FluxTransformer:
    """Flux-dev at full size on the meta device as UNETLoader builds it: bf16, or with
    ``fp8_e4m3fn`` its matrices stored in fp8 behind casting layers (what ``load_flux_file``
    makes of them; it refuses meta tensors, which never hold weights)."""
    with torch.device("meta"):
        if weight_dtype == "default":
            return FluxTransformer(FLUX_DEV, dtype=torch.bfloat16)
        net = FluxTransformer(FLUX_DEV, CastOperations, dtype=torch.bfloat16)
    for p in net.parameters():
        if p.ndim == 2:
            p.data = p.data.to(FP8_STORAGE[weight_dtype])
    return net


def _expected_bytes(net: nn.Module, matrix_size: int) -> int:
    """Matrices at ``matrix_size`` bytes per element, everything else at bf16's 2."""
    return sum(p.numel() * (matrix_size if p.ndim == 2 else 2) for p in net.parameters())


def test_fp8_storage_is_counted_at_its_own_size(tmp_path: Path) -> None:
    bf16 = _full_size("default")
    fp8 = _full_size("fp8_e4m3fn")
    assert fp8.double_blocks[0].img_attn.qkv.weight.dtype == torch.float8_e4m3fn
    params = sum(p.numel() for p in bf16.parameters())
    assert 11.8e9 < params < 12.0e9  # Flux-dev's ~11.9 B parameters
    assert module_bytes(bf16) == 2 * params  # ~23.8 GB: more than a 24 GB card has to spare
    assert module_bytes(fp8) == _expected_bytes(fp8, 1) < 12.2e9  # ~11.9 GB: fits whole
    # The manager reports what it holds at the stored sizes.
    path = tmp_path / "flux.safetensors"
    save_file({"x": torch.zeros(1)}, str(path))
    manager = ModelManager(compute_device="meta", memory=lambda device: 1 << 50)
    manager.load("diffusion_model", path, lambda p, check: fp8)
    assert [m.nbytes for m in manager.loaded()] == [module_bytes(fp8)]


@pytest.mark.parametrize("weight_dtype", ["default", "fp8_e4m3fn"])
def test_partial_plan_for_flux_dev_on_a_24_gb_card(weight_dtype: str) -> None:
    net = _full_size(weight_dtype)
    budget = 22 * GIB  # a 24 GB card less the activations' reserve
    resident, streamed = plan_partial(net, budget)
    holders = [m for m in net.modules() if own_bytes(m) > 0]
    assert sorted(map(id, resident + streamed)) == sorted(map(id, holders))  # each layer once
    on_card = sum(own_bytes(m) for m in resident)
    assert on_card <= budget
    # Norm scales have no streaming twin: they always sit on the card.
    assert all(m in resident for m in net.modules() if isinstance(m, RMSNorm))
    assert all(streaming_class(m) is not None for m in streamed)
    if weight_dtype == "default":
        assert streamed and on_card > budget - 2 * max(own_bytes(m) for m in streamed)  # the card is filled
    else:
        assert not streamed and on_card == module_bytes(net)


class _Memory:
    """Free bytes per device type: ``free`` on the compute device, plenty on the host."""

    def __init__(self, free: int) -> None:
        self.free = free

    def __call__(self, device: torch.device) -> int:
        return self.free if device != torch.device("cpu") else 1 << 50


def _tiny(tmp_path: Path, name: str = "flux.safetensors") -> tuple[Path, dict[str, torch.Tensor]]:
    sd = tiny_flux_weights(seed=3)
    path = tmp_path / name
    save_file(sd, str(path))
    return path, sd


def _inputs(device: str | torch.device) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(2)
    x, ctx, y = torch.randn(1, 16, 4, 6, generator=g), torch.randn(1, 3, 32, generator=g), torch.randn(1, 24, generator=g)
    return tuple(t.to(device) for t in (x, torch.tensor([0.5]), ctx, y, torch.tensor([3.5])))


def test_partial_load_leaves_layers_behind_and_streams_them(tmp_path: Path) -> None:
    path, _ = _tiny(tmp_path)
    whole = module_bytes(build_flux(tiny_flux_weights(seed=3)))
    memory = _Memory(free=whole // 2)
    manager = ModelManager(compute_device="meta", reserve_bytes=1024, memory=memory)
    net: Any = manager.load("diffusion_model", path, lambda p, check: build_flux(tiny_flux_weights(seed=3)))
    with manager.use(net) as device:
        assert device.type == "meta" and manager.is_partial(net)
        behind = [m for m in net.modules() if own_bytes(m) and next(iter(m._parameters.values())).device.type == "cpu"]
        on_card = [m for m in net.modules() if own_bytes(m) and next(iter(m._parameters.values())).device.type == "meta"]
        assert behind and on_card
        assert all(type(m) is CastLinear for m in behind)  # they copy their weights over per call
        assert all(m in on_card for m in net.modules() if isinstance(m, RMSNorm))
        (report,) = manager.loaded()
        assert 0 < report.partial_bytes == sum(own_bytes(m) for m in on_card) <= memory.free - 1024
        with torch.no_grad():
            out = net(*_inputs(device))  # layers on the CPU run against meta inputs: streamed
        assert out.shape == (1, 16, 4, 6) and out.device.type == "meta"
    # Used again, the placement stands (nothing re-planned or moved).
    with manager.use(net):
        assert manager.loaded()[0].partial_bytes == report.partial_bytes
        assert all(type(m) is CastLinear for m in behind)


def test_partially_loaded_model_computes_as_the_whole_and_is_restored(tmp_path: Path) -> None:
    path, sd = _tiny(tmp_path)
    reference = build_flux(sd)
    with torch.no_grad():
        expected = reference(*_inputs("cpu"))
    memory = _Memory(free=module_bytes(reference) // 3)
    manager = ModelManager(compute_device="cpu:0", reserve_bytes=0, memory=memory)
    net: Any = manager.load("diffusion_model", path, lambda p, check: build_flux(sd))
    streamed_before = {name for name, m in net.named_modules() if type(m) is nn.Linear}
    with manager.use(net), torch.no_grad():
        assert manager.is_partial(net)
        switched = {name for name, m in net.named_modules() if type(m) is CastLinear}
        assert switched and switched < streamed_before
        got = net(*_inputs("cpu"))
    assert torch.equal(got, expected)
    # Another model needs the room: the partial one is offloaded whole, its layers as loaded.
    other_path, _ = _tiny(tmp_path, "other.safetensors")
    other: Any = manager.load("diffusion_model", other_path, lambda p, check: nn.Linear(4, 4))
    memory.free = 0
    with manager.use(other):
        pass
    assert not manager.is_partial(net)
    assert {name for name, m in net.named_modules() if type(m) is nn.Linear} == streamed_before
    assert manager.loaded()[0].partial_bytes == 0


def test_fp8_t5_keeps_its_storage_and_encodes_as_the_rounded_weights(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from plugins.core_nodes.models import adapters

    from .test_flux import _write_files

    _write_files(tmp_path)
    folder = tmp_path / "text_encoders"
    t5 = load_file(str(folder / "t5xxl_tiny.safetensors"))
    fp8 = {k: v.to(torch.float8_e4m3fn) if v.ndim == 2 else v for k, v in t5.items()}
    save_file(fp8, str(folder / "t5_fp8.safetensors"))
    save_file({k: v.float() for k, v in fp8.items()}, str(folder / "t5_rounded.safetensors"))
    kept = adapters.load_clip([folder / "clip_l.safetensors", folder / "t5_fp8.safetensors"], "flux")
    rounded = adapters.load_clip([folder / "clip_l.safetensors", folder / "t5_rounded.safetensors"], "flux")
    model = kept.models["t5xxl"]
    assert model.encoder.block[0].layer[0].SelfAttention.q.weight.dtype == torch.float8_e4m3fn
    assert module_bytes(model) < module_bytes(rounded.models["t5xxl"]) / 2
    text = "fp8 text encoder"
    got, _ = kept.encode_from_tokens(kept.tokenize(text), return_pooled=True)
    expected, _ = rounded.encode_from_tokens(rounded.tokenize(text), return_pooled=True)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
