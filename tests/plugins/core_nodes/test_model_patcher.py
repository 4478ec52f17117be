"""The MODEL object's building blocks without a server: patch formats, wrappers, object views."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from plugins.core_nodes.models.extension import (
    WrapperExecutor,
    WrappersMP,
    add_wrapper_with_key,
    get_all_wrappers,
    get_wrappers_with_key,
    merge_nested_dicts,
)
from plugins.core_nodes.models.lora import read_deltas
from plugins.core_nodes.models.patcher import ModelPatcher, object_view
from plugins.core_nodes.models.weight_patches import (
    calculate_weight,
    delta_from_reference,
    reference_from_delta,
)


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _lycoris_files() -> dict[str, dict[str, torch.Tensor]]:
    """One module's tensors in each low-rank format (a 6 x 4 linear weight, or a 6 x 4 x 3 x 3 conv)."""
    g = _g(1)
    r = torch.randn
    return {
        "lora": {"m.lora_up.weight": r(6, 2, generator=g), "m.lora_down.weight": r(2, 4, generator=g),
                 "m.alpha": torch.tensor(1.0)},
        "locon_tucker": {"m.lora_up.weight": r(6, 2, 1, 1, generator=g), "m.lora_mid.weight": r(2, 2, 3, 3, generator=g),
                         "m.lora_down.weight": r(2, 4, 1, 1, generator=g), "m.alpha": torch.tensor(4.0)},
        "loha": {"m.hada_w1_a": r(6, 2, generator=g), "m.hada_w1_b": r(2, 4, generator=g),
                 "m.hada_w2_a": r(6, 2, generator=g), "m.hada_w2_b": r(2, 4, generator=g), "m.alpha": torch.tensor(1.0)},
        "lokr": {"m.lokr_w1": r(2, 2, generator=g), "m.lokr_w2_a": r(3, 2, generator=g),
                 "m.lokr_w2_b": r(2, 2, generator=g), "m.alpha": torch.tensor(1.0)},
        "diff": {"m.diff": r(6, 4, generator=g)},
    }  # fmt: skip


@pytest.mark.parametrize("kind", list(_lycoris_files()))
def test_reference_patch_values_merge_as_our_deltas(kind: str) -> None:
    """``comfy.lora.load_lora``'s values (``("lora", (up, down, alpha, ...))`` ...) are our changes:
    the round trip through the reference layout merges to the same weight."""
    (delta,) = read_deltas(_lycoris_files()[kind]).values()
    shape = (6, 4, 3, 3) if kind == "locon_tucker" else (6, 4)
    weight = torch.randn(shape, generator=_g(2))
    value = reference_from_delta(delta)
    expected = delta.apply(weight, 0.7)
    got = calculate_weight([(0.7, value, 1.0, None, None)], weight.clone(), "k")
    torch.testing.assert_close(got, expected)
    if value[0] != "diff":
        again = delta_from_reference(*value)
        assert again.kind == delta.kind and again.scale == pytest.approx(delta.scale)
    # A Delta itself is a patch value too (what LoraLoader adds).
    assert torch.equal(calculate_weight([(0.7, delta, 1.0, None, None)], weight.clone(), "k"), expected)


def test_calculate_weight_entry_options() -> None:
    weight = torch.arange(12.0).reshape(4, 3)
    diff = torch.ones(4, 3)
    # strength_model scales the weight before the change; function maps the change.
    got = calculate_weight([(2.0, (diff,), 0.5, None, lambda d: d * 3)], weight.clone(), "k")
    assert torch.equal(got, weight * 0.5 + 6.0)
    # A difference of another shape is not merged (a warning), unless it asks for padding.
    assert torch.equal(calculate_weight([(1.0, (torch.ones(2, 2),), 1.0, None, None)], weight.clone(), "k"), weight)
    padded = calculate_weight([(1.0, ("diff", (torch.ones(5, 3), {"pad_weight": True})), 1.0, None, None)], weight, "k")
    assert padded.shape == (5, 3) and torch.equal(padded[:4], weight + 1) and torch.equal(padded[4], torch.ones(3))
    # model_as_lora adds target - original.
    original = {"k": [(torch.zeros(4, 3), None)]}
    got = calculate_weight([(0.5, ("model_as_lora", (diff * 4,)), 1.0, None, None)], weight.clone(), "k", original_weights=original)
    assert torch.equal(got, weight + 2.0)
    with pytest.raises(ValueError, match="not supported"):
        calculate_weight([(1.0, ("glora", (diff,)), 1.0, None, None)], weight.clone(), "k")


def test_wrapper_executor_runs_wrappers_outside_in() -> None:
    calls: list[str] = []

    def wrapper(name: str) -> Any:
        def wrap(executor: WrapperExecutor, x: int) -> int:
            calls.append(name)
            assert executor.class_obj == "owner"
            return executor(x + 1) * 10

        return wrap

    options: dict[str, Any] = {}
    add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, "a", wrapper("a"), options, is_model_options=True)
    add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, "b", wrapper("b"), options, is_model_options=True)
    wrappers = get_all_wrappers(WrappersMP.DIFFUSION_MODEL, options, is_model_options=True)
    assert len(get_wrappers_with_key(WrappersMP.DIFFUSION_MODEL, "a", options["transformer_options"])) == 1
    result = WrapperExecutor.new_class_executor(lambda x: x, "owner", wrappers).execute(1)
    assert calls == ["a", "b"] and result == 300
    merged = merge_nested_dicts({"w": {"k": [1]}, "s": 1}, {"w": {"k": [2]}, "s": 2})
    # The reference's order: inside a nested dict the second dict's list comes first.
    assert merged == {"w": {"k": [2, 1]}, "s": 2}


def test_object_view_replaces_on_a_copy_only() -> None:
    net = nn.Sequential(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), nn.Linear(2, 2))
    inner, relu = net[0], net[0][1]
    view = object_view(net, {"0.1": nn.Identity(), "1.weight": nn.Parameter(torch.zeros(2, 2))})
    assert isinstance(view[0][1], nn.Identity) and torch.equal(view[1].weight, torch.zeros(2, 2))
    assert net[0] is inner and net[0][1] is relu and not torch.equal(net[1].weight, torch.zeros(2, 2))
    # The untouched layers are shared, not copied.
    assert view[0][0] is net[0][0] and view[0][0].weight is net[0][0].weight
    x = torch.randn(3, 2)
    assert not torch.equal(view(x), net(x))


def test_model_patcher_clone_and_setters_use_the_reference_keys() -> None:
    patcher = ModelPatcher(nn.Linear(2, 2), "cpu", "cpu")
    patcher.set_model_attn1_patch(print)
    patcher.set_model_attn2_replace(len, "input", 4, 1)
    patcher.set_model_sampler_cfg_function(lambda cond, uncond, scale: cond, disable_cfg1_optimization=True)
    patcher.set_model_unet_function_wrapper(repr)
    twin = patcher.clone()
    twin.set_model_attn1_patch(len)
    to = patcher.model_options["transformer_options"]
    assert to["patches"]["attn1_patch"] == [print]
    assert twin.model_options["transformer_options"]["patches"]["attn1_patch"] == [print, len]
    assert to["patches_replace"]["attn2"] == {("input", 4, 1): len}
    assert patcher.model_options["disable_cfg1_optimization"] is True
    assert patcher.model_options["model_function_wrapper"] is repr
    # An old three-argument cfg function is adapted to the args dict.
    cfg = patcher.model_options["sampler_cfg_function"]
    assert cfg({"cond": 1, "uncond": 2, "cond_scale": 3}) == 1
    assert twin.parent is patcher and patcher.is_clone(twin) and patcher.clone_has_same_weights(twin)
    twin.add_patches({"weight": (torch.ones(2, 2),)})
    assert not patcher.clone_has_same_weights(twin)
