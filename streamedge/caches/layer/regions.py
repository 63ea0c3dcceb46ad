"""From changed blocks to a few crops: dependency masks, rectangles, merging.

The planner works on each group of cut tensors that share a receptive field
and size. A tensor position is *dirty* when its field touches a changed image
block; dirty positions are gathered into rectangles, each rectangle becomes the
image crop that computes it exactly, and crops are merged while merging is
cheaper than running them apart, according to a cost model measured on this
machine (:class:`CropCostModel`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from streamedge.caches.layer.geometry import AxisField

Rect = tuple[int, int, int, int]
"""``(y0, y1, x0, x1)``, half-open."""
Bool = npt.NDArray[np.bool_]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class CropCostModel:
    """Seconds to run the prefix on a crop: ``per_call_s + per_pixel_s x area``.

    The constant term is what makes many small crops slower than a few larger
    ones (session call, input copy, per-layer dispatch); the linear term is the
    convolution work.
    """

    per_call_s: float
    per_pixel_s: float

    def cost(self, area: float) -> float:
        """Predicted seconds for a crop of ``area`` pixels."""
        return self.per_call_s + self.per_pixel_s * area

    def break_even_area(self, full_s: float) -> float:
        """Area of one crop that costs as much as a full run of ``full_s``."""
        return max(0.0, (full_s - self.per_call_s) / self.per_pixel_s)

    @classmethod
    def fit(cls, points: list[tuple[float, float]]) -> CropCostModel:
        """Least-squares fit of ``(area, seconds)`` measurements.

        A negative intercept (timing noise) is dropped and the line refitted
        through the origin; a non-positive slope falls back to the largest
        measurement divided by its area.
        """
        area = np.array([p[0] for p in points], dtype=np.float64)
        secs = np.array([p[1] for p in points], dtype=np.float64)
        slope = intercept = 0.0
        if len(points) >= 2 and np.ptp(area) > 0:
            slope, intercept = (float(v) for v in np.polyfit(area, secs, 1))
        if intercept < 0:
            intercept = 0.0
            slope = float((area * secs).sum() / max(float((area * area).sum()), 1e-300))
        if slope <= 0:
            i = int(area.argmax())
            intercept = 0.0
            slope = max(float(secs[i]) / max(float(area[i]), 1.0), 1e-15)
        return cls(per_call_s=float(intercept), per_pixel_s=float(slope))


def block_ranges(fld: AxisField, n: int, n_image: int, block: int) -> tuple[I64, I64]:
    """Blocks ``[b0, b1]`` (inclusive) touched by each of ``n`` positions' fields.

    A field that lies entirely in the padding touches no block (``b1 < b0``).
    """
    o = np.arange(n, dtype=np.int64)
    lo = o * fld.jump + fld.start
    hi = lo + fld.extent - 1
    empty = (hi < 0) | (lo > n_image - 1)
    b0 = np.clip(lo, 0, n_image - 1) // block
    b1 = np.clip(hi, 0, n_image - 1) // block
    b1 = np.where(empty, b0 - 1, b1)
    return b0, b1


def window_counts(
    blocks: Bool, rows: tuple[I64, I64], cols: tuple[I64, I64]
) -> npt.NDArray[np.int32]:
    """How many ``True`` blocks each position's field touches.

    Separable prefix sums: first over block rows for each position row, then
    over block columns for each position column.
    """
    r0, r1 = rows[0], np.maximum(rows[1] + 1, rows[0])
    c0, c1 = cols[0], np.maximum(cols[1] + 1, cols[0])
    down = np.zeros((blocks.shape[0] + 1, blocks.shape[1]), dtype=np.int32)
    np.cumsum(blocks, axis=0, dtype=np.int32, out=down[1:])
    per_row = down[r1] - down[r0]  # (n_h, block columns)
    across = np.zeros((per_row.shape[0], per_row.shape[1] + 1), dtype=np.int32)
    np.cumsum(per_row, axis=1, dtype=np.int32, out=across[:, 1:])
    out: npt.NDArray[np.int32] = across[:, c1] - across[:, c0]
    return out


def mask_rects(mask: Bool, tile: tuple[int, int]) -> list[Rect]:
    """Cover the ``True`` cells of ``mask`` with rectangles on a tile grid.

    The mask is first reduced to tiles (a tile is set when any cell in it is);
    each tile row is cut into runs, and a run that repeats exactly on the next
    row extends the rectangle above it. A ring of dirty tiles (a moving object
    whose interior was copied) thus becomes four bands rather than one box.
    """
    n_h, n_w = mask.shape
    th, tw = tile
    gh, gw = -(-n_h // th), -(-n_w // tw)
    if gh * th != n_h or gw * tw != n_w:
        mask = np.pad(mask, ((0, gh * th - n_h), (0, gw * tw - n_w)))
    tiles = mask.reshape(gh, th, gw, tw).any(axis=(1, 3))
    # run boundaries of every row at once: +1 where a run starts, -1 after it ends
    edges = np.diff(tiles.astype(np.int8), axis=1, prepend=0, append=0)
    starts_y, starts_x = np.nonzero(edges == 1)
    ends_x = np.nonzero(edges == -1)[1]
    row_runs: list[list[tuple[int, int]]] = [[] for _ in range(gh + 1)]
    for y, x0, x1 in zip(starts_y.tolist(), starts_x.tolist(), ends_x.tolist(), strict=True):
        row_runs[y].append((x0, x1))
    rects: list[Rect] = []
    open_runs: dict[tuple[int, int], int] = {}
    for y, runs in enumerate(row_runs):
        still: dict[tuple[int, int], int] = {}
        for run in runs:
            still[run] = open_runs.pop(run, y)
        for (x0, x1), y0 in open_runs.items():
            rects.append((y0 * th, min(y * th, n_h), x0 * tw, min(x1 * tw, n_w)))
        open_runs = still
    return rects


def crop_for(
    rect: Rect,
    fields: tuple[AxisField, AxisField],
    image: tuple[int, int],
    align: tuple[int, int],
) -> Rect:
    """The image crop that computes tensor positions ``rect`` exactly.

    The crop covers the union of the positions' fields (their input span),
    clipped to the image, with its origin moved down to a multiple of the
    alignment so that the crop's grid at every layer is the image's grid.
    Where the span leaves the image the crop stops at the border, and the
    model's own padding then applies exactly as on the whole image.
    """
    out: list[int] = []
    for axis, (lo, hi) in enumerate(((rect[0], rect[1]), (rect[2], rect[3]))):
        start, end = fields[axis].span(lo, hi)
        start = max(0, start) // align[axis] * align[axis]
        out += [start, min(image[axis], max(end, start + 1))]
    return out[0], out[1], out[2], out[3]


def area(rect: Rect) -> int:
    """Pixels in a rectangle."""
    return (rect[1] - rect[0]) * (rect[3] - rect[2])


def crops_for(
    rects: I64,
    fields: tuple[AxisField, AxisField],
    image: tuple[int, int],
    align: tuple[int, int],
) -> I64:
    """:func:`crop_for` on an ``(n, 4)`` array of rectangles at once."""
    out = np.empty_like(rects)
    for axis in (0, 1):
        fld = fields[axis]
        lo, hi = rects[:, 2 * axis], rects[:, 2 * axis + 1]
        start = lo * fld.jump + fld.start
        end = (hi - 1) * fld.jump + fld.start + fld.extent
        start = np.maximum(start, 0) // align[axis] * align[axis]
        out[:, 2 * axis] = start
        out[:, 2 * axis + 1] = np.minimum(image[axis], np.maximum(end, start + 1))
    return out


def merge_crops(crops: list[Rect] | I64, cost: CropCostModel, max_crops: int) -> list[Rect]:
    """Greedily merge crops into their bounding boxes while that saves time.

    Each round merges the pair whose bounding box saves the most predicted time
    (``cost(a) + cost(b) - cost(box)``, positive when the crops overlap or when
    one call's overhead outweighs the pixels added). When no merge saves time
    but more than ``max_crops`` remain, the least harmful merge is made. The
    pairwise savings are kept in a matrix of which a merge updates one row and
    one column.
    """
    r = np.unique(np.asarray(crops, dtype=np.int64).reshape(-1, 4), axis=0)
    n = len(r)
    if n == 0:
        return []

    def savings(i: int | slice) -> npt.NDArray[np.float64]:
        ri = r[i]
        box = (np.maximum(ri[..., None, 1], r[:, 1]) - np.minimum(ri[..., None, 0], r[:, 0])) * (
            np.maximum(ri[..., None, 3], r[:, 3]) - np.minimum(ri[..., None, 2], r[:, 2])
        )
        a = (r[:, 1] - r[:, 0]) * (r[:, 3] - r[:, 2])
        ai = (ri[..., 1] - ri[..., 0]) * (ri[..., 3] - ri[..., 2])
        out: npt.NDArray[np.float64] = cost.per_call_s + cost.per_pixel_s * (
            np.asarray(ai)[..., None] + a - box
        )
        return out

    saving = savings(slice(None))
    np.fill_diagonal(saving, -np.inf)
    live = np.ones(n, dtype=bool)
    while live.sum() > 1:
        i, j = np.unravel_index(int(saving.argmax()), saving.shape)
        if saving[i, j] <= 0 and live.sum() <= max_crops:
            break
        r[i] = (
            min(r[i, 0], r[j, 0]),
            max(r[i, 1], r[j, 1]),
            min(r[i, 2], r[j, 2]),
            max(r[i, 3], r[j, 3]),
        )
        live[j] = False
        row = savings(int(i))
        row[~live] = -np.inf
        row[i] = -np.inf
        saving[i, :] = saving[:, i] = row
        saving[j, :] = saving[:, j] = -np.inf
    live_rects = r[live]
    return [(int(c[0]), int(c[1]), int(c[2]), int(c[3])) for c in live_rects]
