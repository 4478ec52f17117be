"""Colour transfer between images: Reinhard and MKL statistics matching in CIE Lab, histogram matching in RGB.

* ``reinhard_lab``: each Lab channel's mean and standard deviation moved to the reference's
  (Reinhard et al. 2001).
* ``mkl_lab``: the Lab colour distribution's mean and full covariance moved to the reference's
  with the Monge-Kantorovich linear map (Pitie and Kokaram 2007).
* ``histogram``: each RGB channel mapped through the lookup table that makes its cumulative
  histogram (256 bins) follow the reference's.

``stats`` says whose statistics the transform starts from: ``per_frame`` (each target frame its
own, matched to the reference frame of the same index or the only one), ``uniform`` (all target
frames pooled into one transform) or ``target_frame`` (one chosen frame's, applied to all).
``strength`` interpolates between the original and the transferred colours (in Lab for the Lab
methods, in RGB for the histogram), and may extrapolate above 1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

EPS = 1e-6
BINS = 256


def _lab(images: torch.Tensor, index: int) -> torch.Tensor:
    """Frame ``index`` of ``images`` ([B, H, W, 3]) in Lab, as ``[1, 3, H, W]``."""
    import kornia

    return kornia.color.rgb_to_lab(images[index : index + 1].float().permute(0, 3, 1, 2))


def _frame_stats(flat: torch.Tensor, reinhard: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [C, 1], std [C, 1] or covariance [C, C]) of one frame's ``[C, N]`` pixels."""
    mean = flat.mean(dim=-1, keepdim=True)
    if reinhard:
        return mean, flat.std(dim=-1, keepdim=True, unbiased=False).clamp_min(EPS)
    centred = flat - mean
    return mean, centred @ centred.T / flat.shape[-1]


def _pooled_stats(images: torch.Tensor, reinhard: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The statistics of all frames together (frames weighted equally), one frame in memory at a time."""
    count, channels = images.shape[0], images.shape[-1]
    mean = torch.zeros(channels, 1)
    for i in range(count):
        mean += _lab(images, i).reshape(channels, -1).mean(dim=-1, keepdim=True)
    mean /= count
    spread = torch.zeros(channels, 1 if reinhard else channels)
    for i in range(count):
        centred = _lab(images, i).reshape(channels, -1) - mean
        if reinhard:
            spread += (centred * centred).mean(dim=-1, keepdim=True)
        else:
            spread += centred @ centred.T / centred.shape[-1]
    if reinhard:
        return mean, torch.sqrt(spread / count).clamp_min(EPS)
    return mean, spread / count


def mkl_matrix(cov_source: torch.Tensor, cov_reference: torch.Tensor) -> torch.Tensor:
    """The linear map T with T cov_source T^T = cov_reference that moves colours least:
    T = S^-1/2 (S^1/2 R S^1/2)^1/2 S^-1/2, through eigendecompositions of symmetric matrices."""
    values_s, vectors_s = torch.linalg.eigh(cov_source)
    root_s = torch.sqrt(values_s.clamp_min(0)).clamp_min(EPS)
    half = vectors_s * root_s.unsqueeze(0)
    middle = half.T @ cov_reference @ half
    values_m, vectors_m = torch.linalg.eigh(middle)
    middle_root = (vectors_m * torch.sqrt(values_m.clamp_min(0)).unsqueeze(0)) @ vectors_m.T
    inverse_half = vectors_s * (1.0 / root_s).unsqueeze(0)
    return inverse_half @ middle_root @ inverse_half.T


Transform = Callable[[torch.Tensor, int], torch.Tensor]


def _lab_transform(
    target: torch.Tensor, reference: torch.Tensor, stats: str, index: int, reinhard: bool
) -> Transform:
    """The map from one target frame's Lab pixels ``[C, N]`` (and its index) to corrected ones."""
    channels = target.shape[-1]
    single_reference = reference.shape[0] == 1
    if single_reference or stats != "per_frame":
        ref_mean, ref_spread = _pooled_stats(reference, reinhard)

    if stats != "per_frame":
        if stats == "target_frame":
            chosen = min(index, target.shape[0] - 1)
            src_mean, src_spread = _frame_stats(_lab(target, chosen).reshape(channels, -1), reinhard)
        else:
            src_mean, src_spread = _pooled_stats(target, reinhard)
        if reinhard:
            scale = ref_spread / src_spread
            offset = ref_mean - scale * src_mean
            return lambda flat, _i: flat * scale + offset
        matrix = mkl_matrix(src_spread, ref_spread)
        shift = ref_mean - matrix @ src_mean
        return lambda flat, _i: matrix @ flat + shift

    def per_frame(flat: torch.Tensor, i: int) -> torch.Tensor:
        src_mean, src_spread = _frame_stats(flat, reinhard)
        if single_reference:
            r_mean, r_spread = ref_mean, ref_spread
        else:
            r_index = min(i, reference.shape[0] - 1)
            r_mean, r_spread = _frame_stats(_lab(reference, r_index).reshape(channels, -1), reinhard)
        centred = flat - src_mean
        if reinhard:
            return centred * (r_spread / src_spread) + r_mean
        matrix = mkl_matrix(centred @ centred.T / flat.shape[-1], r_spread)
        return matrix @ centred + r_mean

    return per_frame


def _bins(flat: torch.Tensor) -> torch.Tensor:
    return (flat * (BINS - 1)).long().clamp(0, BINS - 1)


def _cdf(frames: list[torch.Tensor]) -> torch.Tensor:
    """The per-channel cumulative histogram (normalised to end at 1) of ``[C, N]`` frames together."""
    hist = torch.zeros(frames[0].shape[0], BINS)
    for flat in frames:
        hist.scatter_add_(1, _bins(flat), torch.ones_like(flat))
    cdf = hist.cumsum(1)
    return cdf / cdf[:, -1:]


def _lut(source_cdf: torch.Tensor, reference_cdf: torch.Tensor) -> torch.Tensor:
    """For each source bin, the first reference bin whose cumulative share reaches the source's."""
    return torch.searchsorted(reference_cdf, source_cdf).clamp_max(BINS - 1).float() / (BINS - 1)


def _flat(images: torch.Tensor, index: int) -> torch.Tensor:
    return images[index].float().permute(2, 0, 1).reshape(images.shape[-1], -1)


def transfer(
    target: torch.Tensor,
    reference: torch.Tensor,
    method: str,
    stats: str,
    target_index: int = 0,
    strength: float = 1.0,
) -> torch.Tensor:
    """``target`` ([B, H, W, 3]) with its colours moved towards ``reference``'s; see the module text."""
    import kornia

    count, height, width, channels = target.shape
    out = torch.empty(count, height, width, channels, dtype=torch.float32)
    if method == "histogram":
        uniform_lut = None
        if stats != "per_frame":
            reference_cdf = _cdf([_flat(reference, i) for i in range(reference.shape[0])])
            chosen = [min(target_index, count - 1)] if stats == "target_frame" else range(count)
            uniform_lut = _lut(_cdf([_flat(target, i) for i in chosen]), reference_cdf)
        for i in range(count):
            flat = _flat(target, i)
            lut = uniform_lut
            if lut is None:
                ref = _flat(reference, min(i, reference.shape[0] - 1))
                lut = _lut(_cdf([flat]), _cdf([ref]))
            matched = lut.gather(1, _bins(flat))
            result = matched if strength == 1.0 else torch.lerp(flat, matched, strength)
            out[i] = result.reshape(channels, height, width).permute(1, 2, 0).clamp(0, 1)
        return out.to(target.dtype)

    transform = _lab_transform(target, reference, stats, target_index, reinhard=method == "reinhard_lab")
    for i in range(count):
        lab = _lab(target, i)
        corrected = transform(lab.reshape(channels, -1), i).reshape(1, channels, height, width)
        if strength != 1.0:
            corrected = torch.lerp(lab, corrected, strength)
        rgb = kornia.color.lab_to_rgb(corrected)
        out[i] = rgb.squeeze(0).permute(1, 2, 0).clamp(0, 1)
    return out.to(target.dtype)
