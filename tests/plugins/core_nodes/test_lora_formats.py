"""The LyCORIS / trainer formats beyond plain LoRA and LoHa, checked against the formulas themselves.

Each test writes a file in one format onto the tiny models of ``test_lora``, applies it with
``adapters.apply_lora`` (what LoraLoader runs) and compares the merged weights the patched model
would run with against the change computed here straight from its definition: Kronecker products
with ``torch.kron`` or an explicit ``einsum`` over the factor indices, Tucker products as one
matrix product per kernel position, DoRA from per-channel norms. Tolerance: 1e-6 absolute (fp32).
The end-to-end test runs LoraLoader + KSampler in a real server on a LoKr file.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch.utils._python_dispatch import TorchDispatchMode

from plugins.core_nodes.models import adapters
from plugins.core_nodes.models.lora import PatchedWeights, read_deltas, resolve

from . import test_lora, test_workflows_e2e
from .test_lora import _loaded, _probe
from .test_workflows_e2e import _pixels, _run, _saved, _server, txt2img, with_lora_loader

# The shared tiny checkpoints of the LoRA and workflow tests.
bases = test_lora.bases
checkpoints = test_workflows_e2e.checkpoints
pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOL = {"atol": 1e-6, "rtol": 0.0}
UNET = "model.diffusion_model."
TEXT = "cond_stage_model.transformer.text_model."
# kohya module names of the tiny SD1 model's layers, and the weights they name.
TO_K = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k"  # (32, 64)
TO_Q = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_q"  # (32, 32)
CONV = "lora_unet_input_blocks_1_0_in_layers_2"  # (32, 32, 3, 3), with a bias
CONV_OUT = "lora_unet_input_blocks_1_0_out_layers_3"  # (32, 32, 3, 3)
CONV2 = "lora_unet_input_blocks_2_0_in_layers_2"  # (32, 32, 3, 3)
PROJ_IN = "lora_unet_input_blocks_1_1_proj_in"  # (32, 32, 1, 1), with a bias
NORM = "lora_unet_input_blocks_1_1_norm"  # GroupNorm (32,)
TE_Q = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"  # (64, 64), with a bias
PARAMS = {
    TO_K: UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k",
    TO_Q: UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_q",
    CONV: UNET + "input_blocks.1.0.in_layers.2",
    CONV_OUT: UNET + "input_blocks.1.0.out_layers.3",
    CONV2: UNET + "input_blocks.2.0.in_layers.2",
    PROJ_IN: UNET + "input_blocks.1.1.proj_in",
    NORM: UNET + "input_blocks.1.1.norm",
    TE_Q: TEXT + "encoder.layers.0.self_attn.q_proj",
}


class _Random:
    def __init__(self, seed: int) -> None:
        self.g = torch.Generator().manual_seed(seed)

    def __call__(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.g) * 0.3


def _tucker(core: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sum_ij core[i, j, h, w] a[i, p] b[j, r]``: ``a.T @ core[:, :, h, w] @ b`` at each (h, w)."""
    per_position = a.T @ core.permute(2, 3, 0, 1) @ b
    return per_position.permute(2, 3, 0, 1)


def _kron_conv(w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """A matrix (a, c) times a kernel (b, d, h, w): entry [a*B + b, c*D + d, h, w] = w1[a, c] w2[b, d, h, w]."""
    a, c = w1.shape
    b, d, h, w = w2.shape
    return torch.einsum("ac,bdhw->abcdhw", w1, w2).reshape(a * b, c * d, h, w)


def _write(folder: Path, name: str, sd: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def _patched(
    checkpoint: Path, lora_path: Path, strength_model: float, strength_clip: float
) -> dict[str, torch.Tensor]:
    """Apply through LoraLoader's ``apply_lora``; the patched tensors by checkpoint key."""
    model, clip = adapters.apply_lora(*_loaded(checkpoint), lora_path, strength_model, strength_clip)
    assert model is not None and clip is not None
    merged = {UNET + k: v for k, v in model.weights.merged().items()}
    for name, encoder in clip.models.items():
        weights = PatchedWeights(encoder, clip.patches.get(name))
        merged.update({TEXT + k: v for k, v in weights.merged().items()})
    return merged


def _check(
    merged: dict[str, torch.Tensor], sd: dict[str, torch.Tensor], changes: dict[str, torch.Tensor]
) -> None:
    """Exactly the parameters in ``changes`` are patched, each to its base plus that change."""
    assert set(merged) == set(changes)
    for key, change in changes.items():
        torch.testing.assert_close(merged[key], sd[key] + change, **TOL)
        assert change.abs().max() > 1e-2  # each change is really there


def test_lokr_factors_whole_decomposed_and_tucker(bases: dict[str, Any], tmp_path: Path) -> None:
    path, sd = bases["sd1"]
    r = _Random(1)
    tensors = {
        # Linear (32, 64) = (4, 8) kron (8, 8); the right side decomposed at rank 2: alpha / 2.
        TO_K: {"lokr_w1": r(4, 8), "lokr_w2_a": r(8, 2), "lokr_w2_b": r(2, 8), "alpha": torch.tensor(1.0)},
        # Both sides decomposed (ranks 1 and 2): the right side's rank counts.
        TO_Q: {
            "lokr_w1_a": r(4, 1),
            "lokr_w1_b": r(1, 4),
            "lokr_w2_a": r(8, 2),
            "lokr_w2_b": r(2, 8),
            "alpha": torch.tensor(3.0),
        },
        # Conv (32, 32, 3, 3) = (4, 4) kron (8, 8, 3, 3); the left side decomposed at rank 2.
        CONV: {
            "lokr_w1_a": r(4, 2),
            "lokr_w1_b": r(2, 4),
            "lokr_w2": r(8, 8, 3, 3),
            "alpha": torch.tensor(3.0),
        },
        # Conv with a Tucker core on the right side: (2, 2) kron (16, 16, 3, 3), rank 3.
        CONV_OUT: {
            "lokr_w1": r(2, 2),
            "lokr_w2_a": r(3, 16),
            "lokr_w2_b": r(3, 16),
            "lokr_t2": r(3, 3, 3, 3),
            "alpha": torch.tensor(1.5),
        },
        # Conv in the flat layout: (2, 4) kron (16, 8 * 3 * 3) reshaped to the kernel; no alpha.
        CONV2: {"lokr_w1": r(2, 4), "lokr_w2_a": r(16, 2), "lokr_w2_b": r(2, 72)},
        # Both sides whole: scale 1 whatever the alpha says.
        TE_Q: {"lokr_w1": r(8, 8), "lokr_w2": r(8, 8), "alpha": torch.tensor(4.0)},
    }
    lora = {f"{module}.{part}": t for module, parts in tensors.items() for part, t in parts.items()}
    strength_model, strength_clip = 0.8, -1.2
    merged = _patched(path, _write(tmp_path, "lokr.safetensors", lora), strength_model, strength_clip)

    k, q, c, co, c2, te = (tensors[m] for m in (TO_K, TO_Q, CONV, CONV_OUT, CONV2, TE_Q))
    changes = {
        TO_K: torch.kron(k["lokr_w1"], k["lokr_w2_a"] @ k["lokr_w2_b"]) * (1.0 / 2),
        TO_Q: torch.kron(q["lokr_w1_a"] @ q["lokr_w1_b"], q["lokr_w2_a"] @ q["lokr_w2_b"]) * (3.0 / 2),
        CONV: _kron_conv(c["lokr_w1_a"] @ c["lokr_w1_b"], c["lokr_w2"]) * (3.0 / 2),
        CONV_OUT: _kron_conv(co["lokr_w1"], _tucker(co["lokr_t2"], co["lokr_w2_a"], co["lokr_w2_b"]))
        * (1.5 / 3),
        CONV2: torch.kron(c2["lokr_w1"], c2["lokr_w2_a"] @ c2["lokr_w2_b"]).reshape(32, 32, 3, 3),
        TE_Q: torch.kron(te["lokr_w1"], te["lokr_w2"]),
    }
    strengths = {m: strength_clip if m == TE_Q else strength_model for m in changes}
    _check(merged, sd, {PARAMS[m] + ".weight": strengths[m] * d for m, d in changes.items()})


def test_locon_tucker_core(bases: dict[str, Any], tmp_path: Path) -> None:
    path, sd = bases["sd1"]
    r = _Random(2)
    up, mid, down = r(32, 4, 1, 1), r(4, 4, 3, 3), r(4, 32, 1, 1)
    lora = {
        f"{CONV}.lora_up.weight": up,
        f"{CONV}.lora_mid.weight": mid,
        f"{CONV}.lora_down.weight": down,
        f"{CONV}.alpha": torch.tensor(2.0),
    }
    merged = _patched(path, _write(tmp_path, "locon_cp.safetensors", lora), 0.7, 1.0)

    # delta[o, i, h, w] = sum_mn up[o, m] mid[m, n, h, w] down[n, i], a matrix product per position.
    delta = (up.flatten(1) @ mid.permute(2, 3, 0, 1) @ down.flatten(1)).permute(2, 3, 0, 1)
    # What the trainer ran: 1x1 down, k x k mid, 1x1 up; one k x k convolution does the same.
    x = _Random(3)(1, 32, 6, 6)
    chained = F.conv2d(F.conv2d(F.conv2d(x, down), mid, padding=1), up)
    torch.testing.assert_close(F.conv2d(x, delta, padding=1), chained, atol=1e-5, rtol=1e-5)
    _check(merged, sd, {PARAMS[CONV] + ".weight": 0.7 * (2.0 / 4) * delta})


def test_loha_tucker_cores(bases: dict[str, Any], tmp_path: Path) -> None:
    path, sd = bases["sd1"]
    r = _Random(4)
    # With Tucker cores the a / b factors are rank x out and rank x in.
    parts = {
        "hada_w1_a": r(2, 32),
        "hada_w1_b": r(2, 32),
        "hada_t1": r(2, 2, 3, 3),
        "hada_w2_a": r(2, 32),
        "hada_w2_b": r(2, 32),
        "hada_t2": r(2, 2, 3, 3),
        "alpha": torch.tensor(1.0),
    }
    lora = {f"{CONV}.{part}": t for part, t in parts.items()}
    merged = _patched(path, _write(tmp_path, "loha_cp.safetensors", lora), 1.3, 1.0)

    one = _tucker(parts["hada_t1"], parts["hada_w1_a"], parts["hada_w1_b"])
    two = _tucker(parts["hada_t2"], parts["hada_w2_a"], parts["hada_w2_b"])
    _check(merged, sd, {PARAMS[CONV] + ".weight": 1.3 * (1.0 / 2) * one * two})


def test_full_differences_on_weights_and_biases(bases: dict[str, Any], tmp_path: Path) -> None:
    path, sd = bases["sd1"]
    r = _Random(5)
    lora = {
        f"{PROJ_IN}.diff": r(32, 32, 1, 1),
        f"{PROJ_IN}.diff_b": r(32),
        f"{NORM}.diff": r(32),
        f"{TE_Q}.diff_b": r(64),
    }
    lora_path = _write(tmp_path, "full.safetensors", lora)
    merged = _patched(path, lora_path, 0.5, 2.0)
    changes = {
        PARAMS[PROJ_IN] + ".weight": 0.5 * lora[f"{PROJ_IN}.diff"],
        PARAMS[PROJ_IN] + ".bias": 0.5 * lora[f"{PROJ_IN}.diff_b"],
        PARAMS[NORM] + ".weight": 0.5 * lora[f"{NORM}.diff"],
        PARAMS[TE_Q] + ".bias": 2.0 * lora[f"{TE_Q}.diff_b"],
    }
    _check(merged, sd, changes)

    # The patched biases are the ones the model runs with: a bias-only file changes the outputs.
    model, clip = _loaded(path)
    before = _probe(model, clip, "sd1")
    bias_only = _write(tmp_path, "bias_only.safetensors", {f"{TE_Q}.diff_b": lora[f"{TE_Q}.diff_b"]})
    after = _probe(*adapters.apply_lora(model, clip, bias_only, 1.0, 1.0), "sd1")
    assert (after[1] - before[1]).abs().max() > 1e-3

    # A bias difference for a layer without a bias fits nothing.
    deltas = read_deltas({f"{TO_K}.diff_b": r(32), f"{TO_K}.diff": r(32, 64)})
    found = resolve(deltas, model.unet, {})
    assert found.unmatched == [f"{TO_K}.bias"]
    assert list(found.unet) == ["input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"]


def test_dora_rescales_the_merged_weight_per_channel(bases: dict[str, Any], tmp_path: Path) -> None:
    path, sd = bases["sd1"]
    r = _Random(6)
    k_up, k_down = r(32, 4), r(4, 64)
    c_up, c_down = r(32, 4, 1, 1), r(4, 32, 3, 3)
    k_magnitude = r(1, 64).abs() + 0.5  # per input channel (LyCORIS' default layout)
    c_magnitude = r(32, 1, 1, 1).abs() + 0.5  # per output channel
    lora = {
        f"{TO_K}.lora_up.weight": k_up,
        f"{TO_K}.lora_down.weight": k_down,
        f"{TO_K}.alpha": torch.tensor(2.0),
        f"{TO_K}.dora_scale": k_magnitude,
        f"{CONV}.lora_up.weight": c_up,
        f"{CONV}.lora_down.weight": c_down,
        f"{CONV}.dora_scale": c_magnitude,
    }
    lora_path = _write(tmp_path, "dora.safetensors", lora)
    k_key, c_key = PARAMS[TO_K] + ".weight", PARAMS[CONV] + ".weight"
    k_merged = sd[k_key] + (2.0 / 4) * (k_up @ k_down)
    c_merged = sd[c_key] + (c_up.flatten(1) @ c_down.flatten(1)).reshape(32, 32, 3, 3)
    k_target = k_merged * k_magnitude / torch.linalg.vector_norm(k_merged, dim=0, keepdim=True)
    c_target = c_merged * c_magnitude / torch.linalg.vector_norm(c_merged, dim=(1, 2, 3), keepdim=True)

    full = _patched(path, lora_path, 1.0, 1.0)
    _check(full, sd, {k_key: k_target - sd[k_key], c_key: c_target - sd[c_key]})
    # At full strength every input column / output filter has the trained magnitude.
    norms = torch.linalg.vector_norm(full[k_key], dim=0, keepdim=True)
    torch.testing.assert_close(norms, k_magnitude, **TOL)
    norms = torch.linalg.vector_norm(full[c_key], dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(norms, c_magnitude, **TOL)

    # Other strengths move that far from the base weight towards the decomposed one.
    partial = _patched(path, lora_path, 0.4, 1.0)
    _check(partial, sd, {k_key: 0.4 * (k_target - sd[k_key]), c_key: 0.4 * (c_target - sd[c_key])})


def test_lokr_rank_and_scale_rules() -> None:
    t = torch.ones
    alpha = torch.tensor(6.0)
    deltas = read_deltas(
        {
            "whole.lokr_w1": t(2, 2),
            "whole.lokr_w2": t(3, 3),
            "whole.alpha": alpha,
            "left.lokr_w1_a": t(2, 3),
            "left.lokr_w1_b": t(3, 2),
            "left.lokr_w2": t(3, 3),
            "left.alpha": alpha,
            "both.lokr_w1_a": t(2, 1),
            "both.lokr_w1_b": t(1, 2),
            "both.lokr_w2_a": t(3, 2),
            "both.lokr_w2_b": t(2, 3),
            "both.alpha": alpha,
            "no_alpha.lokr_w1": t(2, 2),
            "no_alpha.lokr_w2_a": t(3, 2),
            "no_alpha.lokr_w2_b": t(2, 3),
            "half.lokr_w1": t(2, 2),  # no second factor: not a change
        }
    )
    assert {name: d.scale for name, d in deltas.items()} == {
        "whole": 1.0,
        "left": 2.0,
        "both": 3.0,
        "no_alpha": 1.0,
    }
    assert torch.equal(deltas["both"].weight(torch.Size([6, 6])), torch.full((6, 6), 1.0 * 2.0 * 3.0))


async def test_lokr_through_lora_loader_and_ksampler(
    comfy_server: Any, tmp_path: Path, checkpoints: dict[str, Path]
) -> None:
    """A LoKr-only file (ignored before, then refused as holding no LoRA weights) changes what
    LoraLoader + KSampler make; at strength 0 the image is the base model's, bit for bit."""
    r = _Random(7)
    lokr = {
        f"{CONV}.lokr_w1": r(4, 4) * 3,
        f"{CONV}.lokr_w2": r(8, 8, 3, 3) * 3,
        f"{TO_K}.lokr_w1": r(4, 8) * 3,
        f"{TO_K}.lokr_w2_a": r(8, 2) * 3,
        f"{TO_K}.lokr_w2_b": r(2, 8) * 3,
        f"{TO_K}.alpha": torch.tensor(2.0),
        f"{TE_Q}.lokr_w1": r(8, 8) * 3,
        f"{TE_Q}.lokr_w2": r(8, 8) * 3,
    }
    lora_path = _write(tmp_path / "loras_src", "tiny_lokr.safetensors", lokr)
    server = await _server(comfy_server, tmp_path, checkpoints, lora=lora_path)
    base = txt2img(checkpoints["sd1"].name)
    plain = _pixels(_saved(server, (await _run(server, base))["9"])[0])

    def with_lokr(strength: float, prefix: str) -> dict[str, Any]:
        return with_lora_loader(base, lora_path.name, strength, strength, prefix)

    changed = _pixels(_saved(server, (await _run(server, with_lokr(1.0, "lokr")))["9"])[0])
    assert np.abs(changed - plain).mean() > 0.5
    zero = _pixels(_saved(server, (await _run(server, with_lokr(0.0, "lokr_zero")))["9"])[0])
    assert np.array_equal(zero, plain)


@pytest.mark.parametrize("shape", [(7, 1), (1, 5)])
def test_a_dora_scale_that_fits_no_axis_is_an_error(shape: tuple[int, int]) -> None:
    up, down = torch.ones(4, 2), torch.ones(2, 3)
    deltas = read_deltas(
        {"m.lora_up.weight": up, "m.lora_down.weight": down, "m.dora_scale": torch.ones(shape)}
    )
    weights = PatchedWeights(torch.nn.Linear(3, 4), {"weight": ((1.0, deltas["m"]),)})
    with pytest.raises(ValueError, match="DoRA scale of shape"):
        weights.merged()


def test_changes_that_do_not_fit_their_layer_are_left_out_and_named(
    bases: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Keys whose module matches but whose change has another size (an SD1 text-encoder LoRA on
    SD2's wider encoder) are listed, not placed: the rest applies and no prompt fails later."""
    path, sd = bases["sd1"]
    r = _Random(8)
    misfits = {
        # Factors of a 96-wide encoder on the 64-wide one: 9216 elements for a (64, 64) weight.
        TE_Q: {"lora_up.weight": r(96, 4), "lora_down.weight": r(4, 96)},
        # A kernel with 16 input channels for a (32, 32, 3, 3) convolution.
        CONV: {"lora_up.weight": r(32, 4, 1, 1), "lora_down.weight": r(4, 16, 3, 3)},
        # As many elements as the (32, 32, 1, 1) weight, but a full difference is added as written.
        PROJ_IN: {"diff": r(32, 32)},
        # LoKr factors whose inner sizes disagree (2 and 3).
        TO_Q: {"lokr_w1": r(4, 4), "lokr_w2_a": r(8, 2), "lokr_w2_b": r(3, 8)},
        # A DoRA scale for 7 channels on a (32, 64) weight.
        TO_K: {"lora_up.weight": r(32, 4), "lora_down.weight": r(4, 64), "dora_scale": r(1, 7).abs()},
    }
    fitting = {
        CONV2: {"lora_up.weight": r(32, 4, 1, 1), "lora_down.weight": r(4, 32, 3, 3)},
        # The flat layout of a kernel: a low-rank change is reshaped to its weight.
        CONV_OUT: {"lora_up.weight": r(32, 4), "lora_down.weight": r(4, 288), "alpha": torch.tensor(2.0)},
    }
    lora = {
        f"{m}.{part}": t
        for group in (misfits, fitting)
        for m, parts in group.items()
        for part, t in parts.items()
    }
    lora_path = _write(tmp_path, "misfits.safetensors", lora)

    with caplog.at_level(logging.WARNING):
        merged = _patched(path, lora_path, 0.6, 1.0)
    c2, co = fitting[CONV2], fitting[CONV_OUT]
    changes = {
        PARAMS[CONV2] + ".weight": 0.6
        * (c2["lora_up.weight"].flatten(1) @ c2["lora_down.weight"].flatten(1)).reshape(32, 32, 3, 3),
        PARAMS[CONV_OUT] + ".weight": 0.6
        * (2.0 / 4)
        * (co["lora_up.weight"] @ co["lora_down.weight"]).reshape(32, 32, 3, 3),
    }
    _check(merged, sd, changes)
    assert "5 keys fit no layer" in caplog.text and TE_Q in caplog.text

    model, clip = _loaded(path)
    found = resolve(read_deltas(lora), model.unet, clip.models)
    assert found.unmatched == list(misfits)
    assert found.reasons == {
        TE_Q: "a change of 9216 elements for a weight of shape (64, 64)",
        CONV: "a change of 4608 elements for a weight of shape (32, 32, 3, 3)",
        PROJ_IN: "a difference of shape (32, 32) for a weight of shape (32, 32, 1, 1)",
        TO_Q: "factors of shapes (8, 2) and (3, 8) do not multiply",
        TO_K: "a DoRA scale of shape (1, 7) for a weight of shape (32, 64)",
    }


def test_incomplete_modules_are_reported(
    bases: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, sd = bases["sd1"]
    r = _Random(9)
    lora = {
        f"{CONV}.hada_w1_a": r(32, 2),
        f"{CONV}.hada_w1_b": r(2, 288),
        f"{CONV}.hada_w2_a": r(32, 2),
        f"{TO_Q}.lokr_w1": r(4, 4),
        f"{TO_Q}.lokr_w2_a": r(8, 2),
        f"{TO_Q}.alpha": torch.tensor(1.0),
        f"{TE_Q}.lora_up.weight": r(64, 4),
        f"{PROJ_IN}.dora_scale": r(32, 1, 1, 1),
        f"{TO_K}.lora_up.weight": r(32, 4),
        f"{TO_K}.lora_down.weight": r(4, 64),
    }
    deltas = read_deltas(lora)
    # Still the mapping of the complete changes its callers read...
    assert list(deltas) == [TO_K]
    # ...with the others beside it, each with what it lacks.
    assert deltas.incomplete == {
        CONV: "a LoHa without hada_w2_b",
        TO_Q: "a LoKr without lokr_w2 (or lokr_w2_a and _b)",
        TE_Q: "a LoRA without its down weight",
        PROJ_IN: "no change beside its dora_scale",
    }
    model, clip = _loaded(path)
    found = resolve(deltas, model.unet, clip.models)
    assert found.unmatched == [CONV, TO_Q, TE_Q, PROJ_IN]
    assert found.reasons[CONV] == "a LoHa without hada_w2_b"

    # LoraLoader's warning counts and names them; the complete change still applies.
    with caplog.at_level(logging.WARNING):
        merged = _patched(path, _write(tmp_path, "incomplete.safetensors", lora), 1.0, 1.0)
    # (safetensors keeps keys sorted, so the file's first incomplete module is the text encoder's)
    assert f"4 keys fit no layer of this model, e.g. {TE_Q} (" in caplog.text
    assert f"e.g. {TE_Q} ({found.reasons[TE_Q]})" in caplog.text  # the warning says why
    k = PARAMS[TO_K] + ".weight"
    _check(merged, sd, {k: lora[f"{TO_K}.lora_up.weight"] @ lora[f"{TO_K}.lora_down.weight"]})


class _Devices(TorchDispatchMode):
    """Records the device of every tensor each torch operation makes."""

    def __init__(self) -> None:
        super().__init__()
        self.made: set[tuple[str, str]] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        self.made |= {(str(func), t.device.type) for t in outs if isinstance(t, torch.Tensor)}
        return out


def test_changes_are_computed_on_the_weights_device() -> None:
    """The factors (read to the CPU) move to the weights' device before they are multiplied; the
    meta device stands in for a GPU: every operation of the merge makes a tensor there."""
    r = _Random(10)
    parts = {
        "lora": {"lora_up.weight": r(32, 4), "lora_down.weight": r(4, 64), "dora_scale": r(1, 64).abs()},
        "tucker": {
            "lora_up.weight": r(32, 4, 1, 1),
            "lora_mid.weight": r(4, 4, 3, 3),
            "lora_down.weight": r(4, 16, 1, 1),
        },
        "loha": {"hada_w1_a": r(32, 2), "hada_w1_b": r(2, 64), "hada_w2_a": r(32, 2), "hada_w2_b": r(2, 64)},
        "lokr": {
            "lokr_w1": r(2, 2),
            "lokr_w2_a": r(3, 16),
            "lokr_w2_b": r(3, 8),
            "lokr_t2": r(3, 3, 3, 3).half(),
        },
        "diff": {"diff": r(32, 16, 3, 3).half(), "diff_b": r(32)},
    }
    deltas = read_deltas({f"{m}.{p}": t for m, group in parts.items() for p, t in group.items()})
    with torch.device("meta"):
        module = torch.nn.ModuleDict(
            {
                "lora": torch.nn.Linear(64, 32),
                "tucker": torch.nn.Conv2d(16, 32, 3),
                "loha": torch.nn.Linear(64, 32),
                "lokr": torch.nn.Conv2d(16, 32, 3),
                "diff": torch.nn.Conv2d(16, 32, 3),
            }
        )
    patches = {f"{name}.{d.param}": ((0.5, d),) for name, d in deltas.items()}
    patches["diff.bias"] = patches.pop("diff.bias.bias")
    weights = PatchedWeights(module, patches)
    with _Devices() as devices:
        merged = weights.merged()
    assert set(merged) == set(patches) and all(t.device.type == "meta" for t in merged.values())
    assert {"aten.mm.default", "aten.bmm.default"} <= {op for op, _ in devices.made}
    assert {device for _, device in devices.made} == {"meta"}
