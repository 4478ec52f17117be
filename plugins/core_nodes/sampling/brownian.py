"""A Brownian-tree noise source for the SDE samplers, bit-compatible with ``torchsde.BrownianTree``.

The SDE samplers (dpmpp_sde, dpmpp_2m_sde, dpmpp_3m_sde and their variants) need the increment of
one Brownian path W over arbitrary sub-intervals [s, t] of [sigma_min, sigma_max], consistent
between overlapping queries. A Brownian tree gives that: the root holds W(t1) - W(t0); every
node is split at its (rounded) midpoint and the left half's increment is drawn from the Brownian
bridge

    W_left = (m - a) / (b - a) * W + sqrt((m - a) (b - m) / (b - a)) * z,   W_right = W - W_left

with ``z`` from a generator seeded by the parent's position in the tree. Times are rounded to
``tol`` (1e-6) so the tree bottoms out, and a query is answered by adding the increments of the
dyadic nodes that tile it. Seeds come from ``numpy.random.SeedSequence`` keyed by (entropy,
node position), which is what makes our values equal torchsde's for the same entropy.
"""

from __future__ import annotations

import math

import numpy as np
import torch

_POOL_SIZE = 24
_TOL = 1e-6


class _Node:
    __slots__ = ("start", "end", "key", "depth", "mid", "left", "right", "w_seed")

    def __init__(self, start: float, end: float, key: int, depth: int) -> None:
        self.start = start
        self.end = end
        self.key = key
        self.depth = depth
        self.mid: float | None = None
        self.left: _Node | None = None
        self.right: _Node | None = None
        self.w_seed = 0


class BrownianTree:
    """One Brownian path on [t0, t1] with values fixed by ``entropy``."""

    def __init__(
        self,
        t0: float,
        t1: float,
        size: tuple[int, ...],
        dtype: torch.dtype,
        entropy: int,
        device: torch.device | str = "cpu",
    ) -> None:
        if t0 > t1:
            raise ValueError(f"t0={t0} must not exceed t1={t1}")
        self._size = size
        self._dtype = dtype
        self._device = torch.device(device)
        self._entropy = entropy
        self._ndigits = -int(math.log10(_TOL))
        self._root = _Node(self._round(t0), self._round(t1), 0, 0)
        w_seed = np.random.SeedSequence(entropy=entropy, pool_size=_POOL_SIZE).generate_state(3)[0]
        # The root increment uses the unrounded span, as torchsde does.
        self._cache: dict[tuple[int, int], torch.Tensor] = {(0, 0): self._randn(w_seed) * math.sqrt(t1 - t0)}

    def _round(self, t: float) -> float:
        return round(t, self._ndigits)

    def _randn(self, seed: int) -> torch.Tensor:
        generator = torch.Generator(device=self._device).manual_seed(int(seed))
        return torch.randn(self._size, dtype=self._dtype, device=self._device, generator=generator)

    def _split(self, node: _Node) -> None:
        node.mid = self._round(0.5 * (node.end + node.start))
        seeds = np.random.SeedSequence(
            entropy=self._entropy, spawn_key=(node.key, node.depth), pool_size=_POOL_SIZE
        ).generate_state(4)
        node.w_seed = int(seeds[0])
        node.left = _Node(node.start, node.mid, 2 * node.key, node.depth + 1)
        node.right = _Node(node.mid, node.end, 2 * node.key + 1, node.depth + 1)

    def _increment(self, path: list[_Node]) -> torch.Tensor:
        # ``path`` runs from the root to the wanted node; walk down it computing bridge samples.
        node = path[-1]
        cached = self._cache.get((node.key, node.depth))
        if cached is not None:
            return cached
        parent = path[-2]
        w = self._increment(path[:-1])
        assert parent.mid is not None
        h_reciprocal = 1 / (parent.end - parent.start)
        left_diff = parent.mid - parent.start
        right_diff = parent.end - parent.mid
        mean = left_diff * w * h_reciprocal
        var = left_diff * right_diff * h_reciprocal
        left_w = mean + math.sqrt(var) * self._randn(parent.w_seed)
        out = left_w if node is parent.left else w - left_w
        self._cache[(node.key, node.depth)] = out
        return out

    def _tiles(self, path: list[_Node], ta: float, tb: float, out: list[list[_Node]]) -> None:
        node = path[-1]
        if ta == node.start and tb == node.end:
            out.append(path)
            return
        if node.mid is None:
            self._split(node)
        assert node.mid is not None and node.left is not None and node.right is not None
        if tb <= node.mid:
            self._tiles([*path, node.left], ta, tb, out)
        elif ta >= node.mid:
            self._tiles([*path, node.right], ta, tb, out)
        else:
            self._tiles([*path, node.left], ta, node.mid, out)
            self._tiles([*path, node.right], node.mid, tb, out)

    def __call__(self, ta: float, tb: float) -> torch.Tensor:
        """W(tb) - W(ta) for t0 <= ta <= tb <= t1 (clamped to the tree's span)."""
        ta = min(max(float(ta), self._root.start), self._root.end)
        tb = min(max(float(tb), self._root.start), self._root.end)
        if ta > tb:
            raise ValueError(f"query times must satisfy ta <= tb, got {ta} > {tb}")
        if ta == tb:
            return torch.zeros(self._size, dtype=self._dtype, device=self._device)
        tiles: list[list[_Node]] = []
        self._tiles([self._root], self._round(ta), self._round(tb), tiles)
        total = self._increment(tiles[0])
        for path in tiles[1:]:
            total = total + self._increment(path)
        return total


class BrownianTreeNoiseSampler:
    """Unit-variance noise for a step from ``sigma`` to ``sigma_next``: (W(b) - W(a)) / sqrt(|b - a|).

    ``cpu`` builds the tree with CPU generators whatever ``x``'s device (the reference's plain SDE
    samplers); otherwise it uses generators on ``x``'s device (its ``*_gpu`` variants). The two
    agree when ``x`` is on the CPU.
    """

    def __init__(
        self,
        x: torch.Tensor,
        sigma_min: torch.Tensor,
        sigma_max: torch.Tensor,
        seed: int | None,
        cpu: bool = True,
    ) -> None:
        if seed is None:
            seed = int(torch.randint(0, 2**63 - 1, ()).item())
        t0, t1 = torch.as_tensor(sigma_min), torch.as_tensor(sigma_max)
        self._sign = 1 if t0 < t1 else -1
        low, high = (t0, t1) if t0 < t1 else (t1, t0)
        device = torch.device("cpu") if cpu else x.device
        self._tree = BrownianTree(float(low.cpu()), float(high.cpu()), tuple(x.shape), x.dtype, seed, device)

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        t0, t1 = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        low, high, sign = (t0, t1, 1) if t0 < t1 else (t1, t0, -1)
        w = self._tree(float(low.detach().cpu().float()), float(high.detach().cpu().float()))
        w = w.to(device=low.device, dtype=low.dtype) * (self._sign * sign)
        return w / (t1 - t0).abs().sqrt()
