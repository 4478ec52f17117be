"""Latent maths, batching and latent operations (comfy_extras.nodes_latent / nodes_rebatch):
each node against the formula written out here, the CFG operation inside a guided step, and
prompts through the real server."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from safetensors import safe_open

from plugins.core_nodes.nodes import custom_sampler as cs
from plugins.core_nodes.nodes import latent_ops as lo

from .node_helpers import messages, run_prompt, start
from .toy_guidance import SIGMAS, cond, guided_offsets, toy_patcher


def seeded(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def latent(samples: torch.Tensor, **extra: Any) -> dict[str, Any]:
    return {"samples": samples, **extra}


# --- arithmetic ----------------------------------------------------------------------------------


def test_add_subtract_multiply() -> None:
    a, b = seeded(2, 4, 8, 8), seeded(2, 4, 8, 8, seed=1)
    (added,) = lo.LatentAdd().execute(latent(a, batch_index=[3, 4]), latent(b))
    assert torch.equal(added["samples"], a + b) and added["batch_index"] == [3, 4]
    (diff,) = lo.LatentSubtract().execute(latent(a), latent(b))
    assert torch.equal(diff["samples"], a - b)
    (scaled,) = lo.LatentMultiply().execute(latent(a), -2.5)
    assert torch.equal(scaled["samples"], a * -2.5)


def test_second_latent_is_resized_and_repeated_to_the_first() -> None:
    a, small = seeded(3, 4, 8, 8), seeded(1, 4, 4, 4, seed=1)
    (added,) = lo.LatentAdd().execute(latent(a), latent(small))
    # Bilinear resize of the one item (same aspect: no crop), repeated over the batch of three.
    resized = torch.nn.functional.interpolate(small, size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(added["samples"], a + resized.repeat(3, 1, 1, 1))
    # A longer second batch is cut to the first's length.
    (cut,) = lo.LatentSubtract().execute(latent(a[:1]), latent(a))
    assert torch.equal(cut["samples"], torch.zeros(1, 4, 8, 8))


def test_interpolate_mixes_directions_and_lengths() -> None:
    a, b = seeded(1, 4, 4, 4), seeded(1, 4, 4, 4, seed=1)
    ratio = 0.3
    (out,) = lo.LatentInterpolate().execute(latent(a), latent(b), ratio)
    expected = torch.empty_like(a)
    for y in range(4):
        for x in range(4):
            va, vb = a[0, :, y, x], b[0, :, y, x]
            mixed = ratio * va / va.norm() + (1 - ratio) * vb / vb.norm()
            expected[0, :, y, x] = mixed / mixed.norm() * (ratio * va.norm() + (1 - ratio) * vb.norm())
    assert torch.allclose(out["samples"], expected, atol=1e-6)
    (same,) = lo.LatentInterpolate().execute(latent(a), latent(b), 1.0)
    assert torch.allclose(same["samples"], a, atol=1e-6)
    with pytest.raises(ValueError, match="batch of 1"):
        lo.LatentInterpolate().execute(latent(seeded(2, 4, 4, 4)), latent(seeded(2, 4, 4, 4)), 0.5)


# --- shapes ----------------------------------------------------------------------------------------


def test_concat_along_each_dimension() -> None:
    a, b = seeded(1, 4, 4, 6), seeded(1, 4, 4, 6, seed=1)
    (x,) = lo.LatentConcat().execute(latent(a), latent(b), "x")
    assert torch.equal(x["samples"], torch.cat((a, b), dim=3))
    (y,) = lo.LatentConcat().execute(latent(a), latent(b), "-y")
    assert torch.equal(y["samples"], torch.cat((b, a), dim=2))
    video, clip = seeded(1, 4, 3, 2, 2), seeded(1, 4, 2, 2, 2, seed=1)
    (t,) = lo.LatentConcat().execute(latent(video), latent(clip), "t")
    assert torch.equal(t["samples"], torch.cat((video, clip), dim=2))
    with pytest.raises(ValueError, match="every other dimension must match"):
        lo.LatentConcat().execute(latent(a), latent(seeded(1, 4, 5, 6)), "x")


def test_cut_clamps_and_counts_from_the_end() -> None:
    s = torch.arange(10, dtype=torch.float32).reshape(1, 1, 1, 10)
    (first,) = lo.LatentCut().execute(latent(s), "x", 2, 3)
    assert first["samples"].flatten().tolist() == [2, 3, 4]
    (tail,) = lo.LatentCut().execute(latent(s), "x", -3, 5)
    assert tail["samples"].flatten().tolist() == [7, 8, 9]
    (past,) = lo.LatentCut().execute(latent(s), "x", 50, 4)
    assert past["samples"].flatten().tolist() == [9]
    (before,) = lo.LatentCut().execute(latent(s), "x", -50, 2)
    assert before["samples"].flatten().tolist() == [0, 1]
    video = seeded(1, 4, 6, 2, 2)
    (frames,) = lo.LatentCut().execute(latent(video), "t", 1, 2)
    assert torch.equal(frames["samples"], video[:, :, 1:3])


def test_cut_to_batch_slices_frames_into_items() -> None:
    video = seeded(2, 4, 7, 2, 2)
    (out,) = lo.LatentCutToBatch().execute(latent(video), "t", 3)
    # Seven frames make two slices of three (the last frame is dropped); batch 2 -> 4 items.
    expected = torch.cat([video[:1, :, 0:3], video[:1, :, 3:6], video[1:, :, 0:3], video[1:, :, 3:6]])
    assert torch.equal(out["samples"], expected)
    image = seeded(1, 4, 4, 8)
    (columns,) = lo.LatentCutToBatch().execute(latent(image), "x", 4)
    assert torch.equal(columns["samples"], torch.cat([image[..., :4], image[..., 4:]]))
    # No frame axis on an image latent: unchanged.
    assert lo.LatentCutToBatch().execute(latent(image), "t", 1)[0]["samples"] is image


def test_batch_keeps_each_items_noise_index() -> None:
    a, b = seeded(2, 4, 4, 4), seeded(1, 4, 8, 8, seed=1)
    (out,) = lo.LatentBatch().execute(latent(a, batch_index=[5, 9]), latent(b))
    assert out["samples"].shape == (3, 4, 4, 4) and out["batch_index"] == [5, 9, 0]
    assert torch.equal(out["samples"][:2], a)


def test_seed_behavior() -> None:
    s = seeded(3, 4, 2, 2)
    (fixed,) = lo.LatentBatchSeedBehavior().execute(latent(s, batch_index=[4, 5, 6]), "fixed")
    assert fixed["batch_index"] == [4, 4, 4]
    (plain,) = lo.LatentBatchSeedBehavior().execute(latent(s), "fixed")
    assert plain["batch_index"] == [0, 0, 0]
    (random,) = lo.LatentBatchSeedBehavior().execute(latent(s, batch_index=[4, 5, 6]), "random")
    assert "batch_index" not in random


def test_replace_video_frames() -> None:
    dest, src = torch.zeros(1, 4, 6, 2, 2), torch.ones(1, 4, 2, 2, 2)
    (out,) = lo.ReplaceVideoLatentFrames().execute(latent(dest), -3, latent(src))
    assert out["samples"][:, :, 3:5].eq(1).all() and out["samples"][:, :, [0, 1, 2, 5]].eq(0).all()
    assert dest.eq(0).all()  # the input is not changed
    assert lo.ReplaceVideoLatentFrames().execute(latent(dest), 5, latent(src))[0]["samples"] is dest
    assert lo.ReplaceVideoLatentFrames().execute(latent(dest), 0)[0]["samples"] is dest


# --- latent operations -------------------------------------------------------------------------------


def test_tonemap_reinhard_compresses_lengths() -> None:
    s = seeded(1, 4, 8, 8) * 3
    (operation,) = lo.LatentOperationTonemapReinhard().execute(2.0)
    out = operation(latent=s)
    length = s.norm(dim=1, keepdim=True) + 1e-10
    top = (length.std() * 5 + length.mean()) * 2.0
    expected = s / length * (length / top) / (length / top + 1) * top
    assert torch.allclose(out, expected, atol=1e-5)
    (applied,) = lo.LatentApplyOperation().execute(latent(s, batch_index=[2]), operation)
    assert torch.allclose(applied["samples"], expected, atol=1e-5) and applied["batch_index"] == [2]


def test_sharpen_is_an_unsharp_mask_of_the_normalised_latent() -> None:
    s = seeded(1, 4, 6, 6)
    radius, sigma, alpha = 1, 1.0, 0.5
    (operation,) = lo.LatentOperationSharpen().execute(radius, sigma, alpha)
    out = operation(latent=s)
    # The kernel by hand: a Gaussian over [-1, 1]^2, scaled by -10 alpha, centre lifted to sum 1.
    grid = torch.tensor([-1.0, 0.0, 1.0])
    g = torch.exp(-(grid[:, None] ** 2 + grid[None, :] ** 2) / (2 * sigma**2))
    k = -10 * alpha * g / g.sum()
    k[1, 1] += 1 - k.sum()
    length = s.norm(dim=1, keepdim=True) + 1e-6
    n = torch.nn.functional.pad(s / length, (1, 1, 1, 1), mode="reflect")
    expected = torch.zeros_like(s)
    for dy in range(3):
        for dx in range(3):
            expected += k[dy, dx] * n[:, :, dy : dy + 6, dx : dx + 6]
    assert torch.allclose(out, expected * length, atol=1e-5)


def test_apply_operation_cfg_acts_on_the_guidance_direction() -> None:
    base = toy_patcher(0.5)
    (double,) = lo.LatentApplyOperationCFG().execute(base, lambda latent, **_: latent * 2)
    assert not base.model_options.get("sampler_pre_cfg_function")
    (guider,) = cs.CFGGuider().get_guider(double, cond(1.0), cond(0.0), 3.0)
    # cond - uncond = 0.5 doubles to 1.0 before CFG: uncond + 3 * 1.0.
    assert [o for _, o in guided_offsets(guider, SIGMAS)] == pytest.approx([3.0] * 4, abs=1e-5)
    (plain,) = cs.CFGGuider().get_guider(base, cond(1.0), cond(0.0), 3.0)
    assert [o for _, o in guided_offsets(plain, SIGMAS)] == pytest.approx([1.5] * 4, abs=1e-5)


def test_pre_cfg_operation_without_an_uncond() -> None:
    x = torch.ones(1, 4, 2, 2)
    apply = lo.pre_cfg_operation(lambda latent, **_: latent + 1)
    assert torch.equal(apply({"conds_out": [x]})[0], x + 1)
    cond_out, uncond_out = apply({"conds_out": [x * 3, x]})
    assert torch.equal(cond_out, x * 3 + 1) and uncond_out is x


# --- rebatching ------------------------------------------------------------------------------------


def test_rebatch_regroups_items_and_keeps_their_indices() -> None:
    a, b, c = seeded(3, 4, 2, 2), seeded(2, 4, 2, 2, seed=1), seeded(1, 4, 3, 3, seed=2)
    mask = torch.zeros(1, 1, 16, 16)
    (out,) = lo.RebatchLatents().rebatch([latent(a), latent(b, noise_mask=mask), latent(c)], [2])
    assert [o["samples"].shape[0] for o in out] == [2, 2, 1, 1]
    assert torch.equal(torch.cat([o["samples"] for o in out[:3]]), torch.cat([a, b]))
    assert [o["batch_index"] for o in out] == [[0, 1], [2, 3], [4], [5]]
    # Masks: full (dropped) for a, the given one (repeated) for b; batches mixing both keep one.
    assert "noise_mask" not in out[0] and "noise_mask" not in out[3]
    assert out[1]["noise_mask"][0].eq(1).all() and out[1]["noise_mask"][1].eq(0).all()
    assert out[2]["noise_mask"].eq(0).all() and out[3]["samples"].shape[-1] == 3


def test_rebatch_into_one_batch_keeps_given_indices() -> None:
    a, b = seeded(1, 4, 2, 2), seeded(2, 4, 2, 2, seed=1)
    (out,) = lo.RebatchLatents().rebatch([latent(a, batch_index=[7]), latent(b)], [8])
    assert len(out) == 1 and out[0]["batch_index"] == [7, 1, 2]
    assert torch.equal(out[0]["samples"], torch.cat([a, b]))


# --- through the server ------------------------------------------------------------------------------


async def test_latent_maths_through_the_server(comfy_server: Any) -> None:
    server = await start(comfy_server)
    prompt = {
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 32, "batch_size": 2}},
        "2": {"class_type": "LatentMultiply", "inputs": {"samples": ["1", 0], "multiplier": 3.0}},
        "3": {
            "class_type": "LatentOperationTonemapReinhard",
            "inputs": {"multiplier": 1.0},
        },
        "4": {"class_type": "LatentApplyOperation", "inputs": {"samples": ["2", 0], "operation": ["3", 0]}},
        "5": {
            "class_type": "LatentConcat",
            "inputs": {"samples1": ["4", 0], "samples2": ["1", 0], "dim": "x"},
        },
        "6": {
            "class_type": "LatentCut",
            "inputs": {"samples": ["5", 0], "dim": "x", "index": -4, "amount": 2},
        },
        "7": {
            "class_type": "LatentBatchSeedBehavior",
            "inputs": {"samples": ["6", 0], "seed_behavior": "fixed"},
        },
        "8": {"class_type": "RebatchLatents", "inputs": {"latents": ["7", 0], "batch_size": 1}},
        "9": {"class_type": "SaveLatent", "inputs": {"samples": ["8", 0], "filename_prefix": "ops"}},
    }
    frames = await run_prompt(server, prompt)
    assert not messages(frames, "execution_error"), messages(frames, "execution_error")
    (executed,) = messages(frames, "executed")
    # RebatchLatents gives a list of two one-item latents: SaveLatent runs once per item.
    names = [entry["filename"] for entry in executed["output"]["latents"]]
    assert len(names) == 2
    for name in names:
        with safe_open(str(server.kernel.settings.output_path / name), framework="pt") as f:
            assert f.get_tensor("latent_tensor").shape == (1, 4, 4, 2)


async def test_a_bad_concat_is_a_node_error(comfy_server: Any) -> None:
    server = await start(comfy_server)
    prompt = {
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 32, "batch_size": 1}},
        "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {
            "class_type": "LatentConcat",
            "inputs": {"samples1": ["1", 0], "samples2": ["2", 0], "dim": "x"},
        },
        "4": {"class_type": "SaveLatent", "inputs": {"samples": ["3", 0], "filename_prefix": "bad"}},
    }
    frames = await run_prompt(server, prompt)
    (error,) = messages(frames, "execution_error")
    assert error["node_id"] == "3" and "every other dimension must match" in error["exception_message"]
    status, body = await server.json(
        "POST",
        "/prompt",
        json={"prompt": {**prompt, "3": {**prompt["3"], "inputs": {**prompt["3"]["inputs"], "dim": "z"}}}},
    )
    assert status == 400 and body["node_errors"]["3"]["errors"][0]["type"] == "value_not_in_list"
