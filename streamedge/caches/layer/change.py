"""Block change detection (DeepCache's 10x10 PSNR test) and diamond search.

Frames are compared as the model sees them: ``(C, H, W)`` float arrays of the
model input. PSNR uses the input's value range as the peak (255 for raw pixels,
about 2 for inputs normalised to [-1, 1]), so one dB threshold means the same
whatever the normalisation: ``PSNR = 10·log10(range² / MSE)`` with the MSE over
the block's pixels and channels. A block whose PSNR against the reference is at
least the threshold is unchanged; comparing MSE with ``range² / 10^(dB/10)``
avoids the logarithm.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]


def mse_limit(psnr_db: float, value_range: float) -> float:
    """Largest block MSE that still counts as unchanged (``inf`` dB: only 0)."""
    if psnr_db == float("inf"):
        return 0.0
    return float(float(value_range) ** 2 / 10.0 ** (psnr_db / 10.0))


def block_mse(x: F32, ref: F32, block: int) -> F64:
    """Mean squared difference per ``block`` x ``block`` square.

    Args:
        x: ``(C, H, W)`` new frame.
        ref: ``(C, H, W)`` reference frame.
        block: block side in pixels; edge blocks may be smaller.

    Returns:
        ``(ceil(H/block), ceil(W/block))`` MSE per block.
    """
    diff = x - ref
    np.square(diff, out=diff)
    # Channel sum by plane additions (several times faster than sum(axis=0));
    # float32 is plenty for sums of a few hundred squares.
    sq = diff[0]
    for plane in diff[1:]:
        sq += plane
    h, w = sq.shape
    gh, gw = -(-h // block), -(-w // block)
    if gh * block != h or gw * block != w:
        padded = np.zeros((gh * block, gw * block), dtype=sq.dtype)
        padded[:h, :w] = sq
        sq = padded
    # Two one-axis reductions beat one reduction over two strided axes.
    rows = sq.reshape(gh, block, gw * block).sum(axis=1)
    sums = rows.reshape(gh, gw, block).sum(axis=2).astype(np.float64)
    hs = np.minimum(block, h - np.arange(gh) * block)
    ws = np.minimum(block, w - np.arange(gw) * block)
    out: F64 = sums / (x.shape[0] * hs[:, None] * ws[None, :])
    return out


# Diamond search patterns, in units of the lattice step (see diamond_search).
_LARGE = np.array([(0, 0), (-2, 0), (2, 0), (0, -2), (0, 2), (-1, -1), (-1, 1), (1, -1), (1, 1)])
_SMALL = np.array([(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)])


def diamond_search(
    x: F32,
    ref: F32,
    blocks: I64,
    *,
    block: int,
    step: tuple[int, int],
    search_range: int,
    limit: float,
) -> tuple[I64, Bool]:
    """Find where each block of ``x`` came from in ``ref`` (diamond search).

    The search walks on the lattice of displacements that are multiples of
    ``step`` (the prefix's alignment): only those displacements let cached
    feature maps be reused by copying, since a shift by a multiple of every
    layer's stride moves every layer's sampling grid onto itself. The large
    diamond (radius 2 steps) moves until its centre is the best point, then the
    small diamond (radius 1 step) refines once — the classic DS scheme on a
    coarser lattice. All blocks are searched together, vectorised.

    Args:
        x: ``(C, H, W)`` new frame.
        ref: ``(C, H, W)`` reference frame.
        blocks: ``(n, 2)`` block grid coordinates (row, col) of full blocks to search.
        block: block side in pixels.
        step: lattice step (dy, dx) in pixels.
        search_range: largest displacement searched, in pixels per axis.
        limit: MSE at or below which a displaced block matches.

    Returns:
        ``(d, ok)``: ``(n, 2)`` displacements in pixels such that
        ``x[block] ≈ ref[block + d]``, and whether the best one matches.
    """
    n = len(blocks)
    c, h, w = x.shape
    if n == 0:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=bool)
    win = np.lib.stride_tricks.sliding_window_view(ref, (block, block), axis=(1, 2))
    top = blocks * block  # (n, 2) pixel origin of each block
    rows = top[:, 0, None] + np.arange(block)
    cols = top[:, 1, None] + np.arange(block)
    cur = x[:, rows[:, :, None], cols[:, None, :]]  # (C, n, block, block)
    steps = np.array(step, dtype=np.int64)
    centre = np.zeros((n, 2), dtype=np.int64)  # in lattice units
    best = np.full(n, np.inf)
    active = np.ones(n, dtype=bool)
    max_units = np.array([search_range // step[0], search_range // step[1]], dtype=np.int64)

    def cost(idx: I64, cand: I64) -> F64:
        # cand: (m, k, 2) lattice displacements for blocks idx (m,)
        disp = cand * steps
        pos = top[idx, None, :] + disp
        inside = (
            (np.abs(cand) <= max_units).all(axis=2)
            & (pos[..., 0] >= 0)
            & (pos[..., 1] >= 0)
            & (pos[..., 0] <= h - block)
            & (pos[..., 1] <= w - block)
        )
        py = np.clip(pos[..., 0], 0, h - block)
        px = np.clip(pos[..., 1], 0, w - block)
        patches = win[:, py, px]  # (C, m, k, block, block)
        d = patches - cur[:, idx, None]
        mse = np.einsum("cmkij,cmkij->mk", d, d, dtype=np.float64) / (c * block * block)
        return np.where(inside, mse, np.inf)

    for _ in range(int(max_units.max()) + 2):
        idx = np.flatnonzero(active)
        if len(idx) == 0:
            break
        cand = centre[idx, None, :] + _LARGE[None]
        costs = cost(idx, cand)
        pick = costs.argmin(axis=1)
        best[idx] = costs[np.arange(len(idx)), pick]
        moved = pick != 0
        centre[idx[moved]] = cand[moved, pick[moved]]
        active[idx[~moved]] = False
    cand = centre[:, None, :] + _SMALL[None]
    costs = cost(np.arange(n), cand)
    pick = costs.argmin(axis=1)
    best = costs[np.arange(n), pick]
    final = cand[np.arange(n), pick] * steps
    return final.astype(np.int64), best <= limit
