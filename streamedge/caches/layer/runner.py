"""Run an ONNX model with its convolutional prefix cached across frames.

Per frame and key (a stream, or a stream and a pyramid scale):

1. no state, a new input size or the refresh cadence → run the prefix on the
   whole image and cache the frame and the cut tensors;
2. otherwise compare the frame with the cached one in blocks (PSNR), optionally
   find displaced blocks by diamond search, and mark the cut-tensor positions
   whose receptive field touches a changed block;
3. cover those positions with a few aligned crops; if the crops are predicted
   (by a cost model measured at warm-up) to cost as much as a full run, run it
   in full; otherwise run the prefix on each crop and splice the exact part of
   its output into the cached maps;
4. run the suffix (if any) on the maps and return the model's outputs.

The reference a frame is compared with is not simply the previous frame: it
holds, block by block, the pixels the cached maps reflect. A changed block
takes the new pixels (every position that reads it is recomputed); an
unchanged block keeps its old pixels, so a slow drift adds up until the block
crosses the threshold or the periodic refresh (Reducto's "compare with the
last frame sent" rather than DeepCache's "compare with the previous frame").

Motion (``diamond_search``). A changed block that matches the reference
displaced by ``d`` (searched only on multiples of the prefix alignment, the
least common multiple of every layer's cumulative stride) is *moved*. A cut
position whose receptive field lies inside the image and touches only blocks
moved by the same ``d`` takes the cached value at ``position + d / jump``: a
shift by a multiple of every stride maps each layer's sampling grid onto
itself, and no padding is involved, so the copy is exact when the content moved
exactly. Every other position touching a moved block is recomputed. A moved
block's reference becomes the displaced reference content, which is what the
copied maps reflect. Displacements that are not multiples of the alignment are
never proposed, so such motion is recomputed like any change.

Exactness. With ``psnr_db=inf`` (only bit-identical blocks reused) the spliced
maps equal a full run up to onnxruntime's float rounding: crops start on the
alignment grid, cover the receptive field of every position to recompute, stop
at the image border where the field leaves the image (so the model's own
padding applies, explicit pads being fixed at the whole image's values for
``SAME`` nodes), and only the positions whose crop value is exact (computed
layer by layer, :meth:`Layout.valid`) are spliced.

``onnx`` and ``onnxruntime`` are imported when a runner is built.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from streamedge.caches.layer.change import block_mse, diamond_search, mse_limit
from streamedge.caches.layer.graph import (
    Layout,
    LayoutError,
    PrefixAnalysis,
    analyse,
    layout,
    split,
    with_explicit_pads,
)
from streamedge.caches.layer.regions import (
    CropCostModel,
    Rect,
    area,
    block_ranges,
    crop_for,
    crops_for,
    mask_rects,
    merge_crops,
    window_counts,
)
from streamedge.caches.layer.state import (
    Counters,
    LayerCache,
    LayerCacheStats,
    StreamState,
)
from streamedge.caches.layer_config import LayerCacheConfig
from streamedge.errors import ConfigError, InferenceError

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Sequence
    from pathlib import Path

    import onnx

    from streamedge.caches.layer.geometry import AxisField

_log = logging.getLogger(__name__)

Array = npt.NDArray[Any]
F32 = npt.NDArray[np.float32]
Bool = npt.NDArray[np.bool_]

_MAX_PLANS = 64
_MAX_RECTS = 48  # before merging; beyond this the tile grid is coarsened
_MAX_DISPLACEMENTS = 8  # distinct motion vectors used per frame
_EMA = 0.2
_MAX_BACKOFF = 8  # frames run in full, without change detection, after crops lost


@dataclass(frozen=True, slots=True)
class Decision:
    """A threshold the model's caller applies to one channel of one output.

    Reused positions carry the values of an earlier frame; near a threshold a
    small difference flips the decision (MTCNN: a PNet cell becomes or stops
    being a face candidate, and the final boxes change with it). A position
    whose cached value is at least ``threshold - margin`` is therefore always
    recomputed, so every position that passes carries an exact value; a
    position can still be missed if its true value crossed the threshold from
    more than ``margin`` below while its blocks stayed under the PSNR limit.

    Attributes:
        output: a cut tensor of the prefix (a model output for fully local models).
        channel: the channel thresholded (PNet ``prob``: 1, the face class).
        threshold: values at or above it pass.
    """

    output: str
    channel: int
    threshold: float


@dataclass(eq=False, slots=True)
class _Group:
    """Cut tensors that share a receptive field and a size."""

    names: tuple[str, ...]
    fields: tuple[AxisField, AxisField]
    size: tuple[int, int]
    channels: int
    rows: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]
    cols: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]
    touched: npt.NDArray[np.int64]
    inside: Bool
    tile: tuple[int, int]


@dataclass(eq=False, slots=True)
class _Plan:
    """The prefix laid out for one input size, with its session and costs."""

    layout: Layout
    session: Any
    cut: tuple[str, ...]
    groups: list[_Group]
    full_s: float
    cost: CropCostModel
    crop_scale: float = 1.0
    """Observed over predicted crop time (EMA): the cost model was measured
    once, at warm-up, while the load on the machine keeps changing, as does
    :attr:`full_s`, which every full run updates."""


@dataclass(eq=False, slots=True)
class _Copy:
    """Positions of one group copied from displaced positions of the old map."""

    group: _Group
    dst: tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]
    src: tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]


@dataclass(eq=False, slots=True)
class _Work:
    """What a partial frame has to do."""

    changed: Bool
    moved: list[tuple[tuple[int, int], npt.NDArray[np.intp]]] = field(default_factory=list)
    """(displacement, (k, 2) block coordinates) per motion vector."""
    copies: list[_Copy] = field(default_factory=list)
    needs: list[Bool] = field(default_factory=list)
    crops: list[Rect] = field(default_factory=list)


class LayerCachedRunner:
    """An ONNX model whose convolutional prefix is cached per key.

    Use :meth:`run` instead of ``session.run(None, {input: x})``. Keys are any
    hashable; an image pyramid should use one key per (stream, scale), since
    each scale has its own size and maps.

    Args:
        model: path of an ``.onnx`` file or a loaded ``onnx.ModelProto`` with one
            NCHW float input.
        cfg: cache settings.
        outputs: the model outputs wanted, in the order :meth:`run` returns
            them (default: all). Others are cut away first, so they are
            neither computed nor cached (PNet: ``("reg", "prob")`` drops the
            32-channel ``features`` map).
        providers: onnxruntime execution providers (default CPU).
        session_options: an ``onnxruntime.SessionOptions`` for every session.
        cost_model: crop cost model to use as is instead of measuring one at
            warm-up and tracking its drift (tests use it to make the
            full-versus-crops decision deterministic).
        clock: monotonic seconds (injected in tests).
        decision: a threshold the caller applies to one output channel
            (MTCNN: PNet's face probability against 0.6). With
            ``cfg.recheck_margin`` set, every position whose cached value is at
            least ``threshold - margin`` is recomputed on every frame, changed
            or not, so the positions that pass the threshold carry exact values
            (see :class:`Decision`).
        name: what the log lines call the model (e.g. ``mtcnn@1 pnet``).

    Raises:
        ConfigError: the model cannot be loaded, or ``decision`` names no
            output of the prefix.
    """

    def __init__(
        self,
        model: str | Path | onnx.ModelProto,
        cfg: LayerCacheConfig | None = None,
        *,
        outputs: Sequence[str] | None = None,
        providers: Sequence[str] | None = None,
        session_options: Any = None,
        cost_model: CropCostModel | None = None,
        clock: Callable[[], float] = time.perf_counter,
        decision: Decision | None = None,
        name: str = "",
    ) -> None:
        import onnx
        import onnxruntime

        self.cfg = cfg if cfg is not None else LayerCacheConfig()
        self.name = name or (model.graph.name if isinstance(model, onnx.ModelProto) else str(model))
        if isinstance(model, onnx.ModelProto):
            proto = model
        else:
            try:
                proto = onnx.load(str(model))
            except (OSError, ValueError) as exc:
                msg = f"cannot load ONNX model {model}: {exc}"
                raise ConfigError(msg) from exc
        if outputs is not None:
            proto = _keep_outputs(proto, list(outputs))
        self._ort = onnxruntime
        self._providers = list(providers) if providers else ["CPUExecutionProvider"]
        self._session_options = session_options
        self._clock = clock
        self._proto = proto
        self._plain: Any = None
        self._limit = mse_limit(self.cfg.psnr_db, self.cfg.input_range)
        self._fixed_cost = cost_model
        self._costs: dict[tuple[Any, ...], CropCostModel] = {}
        self._sessions: dict[tuple[Any, ...], Any] = {}
        self._plans: OrderedDict[tuple[int, int], _Plan | None] = OrderedDict()
        self._plan_lock = threading.Lock()
        self._counters = Counters()
        self.cache = LayerCache(self.cfg.max_bytes)
        self.analysis: PrefixAnalysis = self._analyse(proto)
        self.decision = decision if self.cfg.recheck_margin is not None else None
        self._prefix: onnx.ModelProto | None = None
        self._suffix: Any = None
        reason = self.analysis.reason
        if self.cfg.enabled and reason is None:
            try:
                prefix, suffix = split(proto, self.analysis)
                suffix_session = None if suffix is None else self._session(suffix)
            except (ValueError, ConfigError) as exc:
                # onnx's extractor or onnxruntime refused the pieces: run whole
                reason = f"the split failed: {exc}"
            else:
                self._prefix, self._suffix = prefix, suffix_session
                if self.decision is not None and self.decision.output not in self.analysis.cut:
                    msg = (
                        f"layer cache: decision output {self.decision.output!r} is not cut "
                        f"from the prefix (cut: {list(self.analysis.cut)})"
                    )
                    raise ConfigError(msg)
                _log.info(
                    "layer cache for %s: local prefix of %d ops, cut %s, %s",
                    self.name,
                    len(self.analysis.steps),
                    list(self.analysis.cut),
                    f"suffix from {self.analysis.stop}" if suffix else "no suffix",
                )
        self.reason: str | None = "disabled" if not self.cfg.enabled else reason
        """Why frames run the whole model, or ``None`` when the cache is in use."""
        if not self.cfg.enabled:
            _log.info("layer cache disabled for %s: every frame runs the whole model", self.name)
        elif reason is not None:
            # Configured but unusable: the one line that says why it does nothing.
            _log.warning(
                "layer cache off for %s (%s): every frame runs the whole model",
                self.name,
                reason,
            )

    @staticmethod
    def _analyse(proto: onnx.ModelProto) -> PrefixAnalysis:
        try:
            return analyse(proto)
        except Exception as exc:  # noqa: BLE001 - an odd graph disables the cache, no more
            name = proto.graph.input[0].name if proto.graph.input else ""
            outputs = tuple(o.name for o in proto.graph.output)
            return PrefixAnalysis(image=name, outputs=outputs, reason=f"analysis failed: {exc!r}")

    # ------------------------------------------------------------------ public

    @property
    def active(self) -> bool:
        """Whether frames go through the cache (enabled and splittable)."""
        return self._prefix is not None

    @property
    def input_name(self) -> str:
        """Name of the model's image input."""
        return self.analysis.image

    @property
    def output_names(self) -> tuple[str, ...]:
        """The model's outputs, in the order :meth:`run` returns them."""
        return self.analysis.outputs

    def stats(self) -> LayerCacheStats:
        """A snapshot of the counters."""
        return self._counters.snapshot(self.cache)

    def reset(self, key: Hashable | None = None) -> None:
        """Forget one key's state, or every state."""
        if key is None:
            self.cache.clear()
        else:
            self.cache.pop(key)

    def bind(self, stream: Hashable) -> BoundRunner:
        """A callable ``(image, level) -> outputs`` keyed on ``(stream, level)``.

        It fits MTCNN's ``PNetRunner`` protocol: the detector passes the
        pyramid level, so each scale of each stream keeps its own maps.
        """
        return BoundRunner(self, stream)

    def run_plain(self, image: Array) -> list[Array]:
        """Run the unsplit model once, with no caching (the baseline)."""
        if self._plain is None:
            with self._plan_lock:  # concurrent first calls build one session
                if self._plain is None:
                    self._plain = self._session(self._proto)
        return self._call(self._plain, None, {self.analysis.image: self._as_input(image)})

    def warmup(self, image: Array) -> CropCostModel | None:
        """Prepare (and time) the plan for ``image``'s size ahead of the first frame.

        Returns:
            The crop cost model in use for that size, or ``None`` when the size
            is not cached.
        """
        x = self._as_input(image)
        if not self.active or x.shape[0] != 1:
            return None
        plan, _ = self._plan_for(x)
        return None if plan is None else plan.cost

    def run(self, key: Hashable, image: Array) -> list[Array]:
        """Compute the model's outputs for ``image``, reusing ``key``'s cached maps.

        Args:
            key: the state to use, e.g. ``(stream, scale_index)``.
            image: ``(1, C, H, W)`` model input (cast to float32).

        Returns:
            The model's outputs in :attr:`output_names` order.

        Raises:
            InferenceError: onnxruntime failed on the whole image.
            ValueError: ``image`` is not rank 4.
        """
        x = self._as_input(image)
        with self._counters.lock:
            self._counters.frames += 1
        if not self.active or x.shape[0] != 1:
            return self._fallback(x)
        plan, fresh = self._plan_for(x)
        if plan is None:
            return self._fallback(x)
        state = self.cache.get(key)
        every = self.cfg.refresh_every
        if fresh is not None or state is None or state.shape != x.shape:
            return self._full(key, plan, x, "first", fresh)
        if every and state.since_refresh + 1 >= every:
            return self._full(key, plan, x, "refresh", backoff=state.backoff)
        if state.skip > 0:
            # The last attempts found crops dearer than a full run: do not pay
            # for change detection again right away.
            return self._full(key, plan, x, "cost", backoff=state.backoff, skip=state.skip - 1)
        start = self._clock()
        try:
            reused = self._partial(plan, state, x)
        except Exception:  # noqa: BLE001 - fail open: a full run instead of no answer
            _log.warning(
                "layer cache: partial run failed for %r; running in full",
                key,
                exc_info=True,
            )
            with self._counters.lock:
                self._counters.errors += 1
            return self._full(key, plan, x, "error")
        if reused is None:
            backoff = min(max(1, 2 * state.backoff), _MAX_BACKOFF)
            return self._full(key, plan, x, "cost", backoff=backoff, skip=backoff)
        elapsed = self._clock() - start
        state.since_refresh += 1
        state.backoff = 0
        total = sum(len(g.names) * g.size[0] * g.size[1] for g in plan.groups)
        with self._counters.lock:
            c = self._counters
            c.partial_runs += 1
            c.positions += total
            c.reused_positions += reused
            c.unchanged_frames += reused == total
            c.prefix_seconds_saved += plan.full_s - elapsed
        return self._finish(state.maps, x)

    # ------------------------------------------------------------------ paths

    def _fallback(self, x: F32) -> list[Array]:
        with self._counters.lock:
            self._counters.fallbacks += 1
        return self.run_plain(x)

    def _full(
        self,
        key: Hashable,
        plan: _Plan,
        x: F32,
        reason: str,
        maps: dict[str, Array] | None = None,
        *,
        backoff: int = 0,
        skip: int = 0,
    ) -> list[Array]:
        if maps is None:
            start = self._clock()
            maps = self._run_prefix(plan, x)
            plan.full_s += _EMA * ((self._clock() - start) - plan.full_s)
        state = StreamState(
            shape=x.shape, reference=x[0].copy(), maps=maps, backoff=backoff, skip=skip
        )
        self.cache.put(key, state)
        total = sum(len(g.names) * g.size[0] * g.size[1] for g in plan.groups)
        with self._counters.lock:
            c = self._counters
            c.full_runs += 1
            c.positions += total
            if reason == "first":
                c.first_runs += 1
            elif reason == "refresh":
                c.refreshes += 1
            elif reason == "cost":
                c.cost_full_runs += 1
        return self._finish(maps, x)

    def _partial(self, plan: _Plan, state: StreamState, x: F32) -> int | None:
        """Update ``state`` in place.

        Returns:
            Positions not recomputed, or ``None`` when a full run is cheaper.
        """
        work = self._plan_work(plan, state, x)
        if work is None:
            return None
        predicted = sum(plan.cost.cost(area(c)) for c in work.crops)
        if work.crops and predicted * plan.crop_scale >= plan.full_s:
            return None
        maps = state.maps
        # Copies read the old maps, so gather every source before writing anything.
        gathered = [
            (cp, {n: maps[n][:, :, cp.src[0], cp.src[1]] for n in cp.group.names})
            for cp in work.copies
        ]
        for cp, values in gathered:
            for name, vals in values.items():
                maps[name][:, :, cp.dst[0], cp.dst[1]] = vals
        redone = [np.zeros(g.size, dtype=bool) for g in plan.groups]
        lay = plan.layout
        start = self._clock()
        for crop in work.crops:
            y0, y1, x0, x1 = crop
            outs = self._call(
                plan.session,
                list(plan.cut),
                {lay.image: np.ascontiguousarray(x[:, :, y0:y1, x0:x1])},
            )
            valid = lay.valid(crop, plan.cut)
            by_name = dict(zip(plan.cut, outs, strict=True))
            for gi, group in enumerate(plan.groups):
                vy0, vy1, vx0, vx1 = valid[group.names[0]]
                if vy0 >= vy1 or vx0 >= vx1:
                    continue
                oy = y0 // group.fields[0].jump
                ox = x0 // group.fields[1].jump
                for name in group.names:
                    maps[name][:, :, vy0:vy1, vx0:vx1] = by_name[name][
                        :, :, vy0 - oy : vy1 - oy, vx0 - ox : vx1 - ox
                    ]
                redone[gi][vy0:vy1, vx0:vx1] = True
        if work.crops and predicted > 0 and self._fixed_cost is None:
            ratio = (self._clock() - start) / predicted
            plan.crop_scale += _EMA * (ratio - plan.crop_scale)
        for need, done in zip(work.needs, redone, strict=True):
            if (need & ~done).any():
                msg = "crops did not cover every position that depends on a change"
                raise RuntimeError(msg)
        self._update_reference(state, x, work)
        with self._counters.lock:
            self._counters.crops += len(work.crops)
            self._counters.copied_positions += sum(
                len(cp.dst[0]) * len(cp.group.names) for cp in work.copies
            )
        return sum(
            int((~done).sum()) * len(g.names) for g, done in zip(plan.groups, redone, strict=True)
        )

    def _plan_work(self, plan: _Plan, state: StreamState, x: F32) -> _Work | None:
        """Find what changed and the crops that recompute it (``None``: run in full)."""
        cfg = self.cfg
        block = cfg.block_size
        lay = plan.layout
        h, w = lay.height, lay.width
        changed = block_mse(x[0], state.reference, block) > self._limit
        work = _Work(changed=changed)
        disp_id = np.full(changed.shape, -1, dtype=np.int64)
        if cfg.diamond_search and changed.any():
            full_rows = (np.arange(changed.shape[0]) + 1) * block <= h
            full_cols = (np.arange(changed.shape[1]) + 1) * block <= w
            cand = np.argwhere(changed & full_rows[:, None] & full_cols[None, :])
            disp, ok = diamond_search(
                x[0],
                state.reference,
                cand,
                block=block,
                step=lay.align,
                search_range=cfg.search_range,
                limit=self._limit,
            )
            ok &= (disp != 0).any(axis=1)
            if ok.any():
                vectors, inverse, counts = np.unique(
                    disp[ok], axis=0, return_inverse=True, return_counts=True
                )
                for k in np.argsort(-counts)[:_MAX_DISPLACEMENTS]:
                    blocks = cand[ok][inverse.reshape(-1) == k]
                    disp_id[blocks[:, 0], blocks[:, 1]] = len(work.moved)
                    changed[blocks[:, 0], blocks[:, 1]] = False
                    d = (int(vectors[k][0]), int(vectors[k][1]))
                    work.moved.append((d, blocks))
        # Cheap lower bound before any planning: the changed pixels alone, in one
        # crop with no halo, already cost more than a full run.
        n_changed = int(changed.sum())
        if n_changed * block * block * plan.cost.per_pixel_s * plan.crop_scale >= (plan.full_s):
            return None
        dirty = changed | (disp_id >= 0)
        crops: list[npt.NDArray[np.int64]] = []
        for group in plan.groups:
            need = window_counts(dirty, group.rows, group.cols) > 0
            for k, (d, _) in enumerate(work.moved):
                same = window_counts(disp_id == k, group.rows, group.cols)
                copy = (same == group.touched) & group.inside & need
                dy, dx = d[0] // group.fields[0].jump, d[1] // group.fields[1].jump
                dst_y, dst_x = np.nonzero(copy)
                src_y, src_x = dst_y + dy, dst_x + dx
                ok = (src_y >= 0) & (src_y < group.size[0]) & (src_x >= 0) & (src_x < group.size[1])
                if ok.any():
                    dst = (dst_y[ok], dst_x[ok])
                    work.copies.append(_Copy(group, dst, (src_y[ok], src_x[ok])))
                    need[dst] = False
            if self.decision is not None and self.decision.output in group.names:
                need |= self._near_decision(state)
            work.needs.append(need)
            n_need = int(need.sum())
            if not n_need:
                continue
            # Second lower bound: each position to recompute brings jump_h x jump_w
            # input pixels of its own into some crop.
            jumps = group.fields[0].jump * group.fields[1].jump
            if n_need * jumps * plan.cost.per_pixel_s * plan.crop_scale >= plan.full_s:
                return None
            tile = group.tile
            rects = mask_rects(need, tile)
            while len(rects) > _MAX_RECTS:
                tile = (tile[0] * 2, tile[1] * 2)
                rects = mask_rects(need, tile)
            rect_array = np.array(rects, dtype=np.int64).reshape(-1, 4)
            crops.append(crops_for(rect_array, group.fields, (h, w), lay.align))
        if crops:
            work.crops = merge_crops(np.concatenate(crops), plan.cost, cfg.max_crops)
        return work

    def _near_decision(self, state: StreamState) -> Bool:
        """Positions whose cached value passes, or nearly passes, the decision threshold."""
        d = self.decision
        margin = self.cfg.recheck_margin or 0.0
        if d is None:  # pragma: no cover - callers check
            return np.zeros(0, dtype=bool)
        values = state.maps[d.output][0, d.channel]
        near: Bool = values >= d.threshold - margin
        if near.any():
            with self._counters.lock:
                self._counters.rechecked_positions += int(near.sum())
        return near

    def _update_reference(self, state: StreamState, x: F32, work: _Work) -> None:
        """Make the reference hold the pixels the maps now reflect, block by block.

        Changed blocks take the new pixels (every position reading them was
        recomputed). A moved block takes the old reference content it was matched
        to, because the maps copied there reflect that content, not the new one.
        """
        ref = state.reference
        block = self.cfg.block_size
        moved_pixels = []
        for (dy, dx), blocks in work.moved:
            for by, bx in blocks.tolist():
                y, xx = by * block, bx * block
                moved_pixels.append(
                    (
                        y,
                        xx,
                        ref[:, y + dy : y + dy + block, xx + dx : xx + dx + block].copy(),
                    )
                )
        if work.changed.any():
            h, w = ref.shape[1:]
            mask = np.repeat(np.repeat(work.changed, block, axis=0), block, axis=1)[:h, :w]
            np.copyto(ref, x[0], where=mask[None])
        for y, xx, pixels in moved_pixels:
            ref[:, y : y + block, xx : xx + block] = pixels

    def _finish(self, maps: dict[str, Array], x: F32) -> list[Array]:
        suffix_out: dict[str, Array] = {}
        if self._suffix is not None:
            a = self.analysis
            feeds = {n: (x if n == a.image else maps[n]) for n in a.suffix_inputs}
            outs = self._call(self._suffix, list(a.suffix_outputs), feeds)
            suffix_out = dict(zip(a.suffix_outputs, outs, strict=True))
        # Cached maps are returned as copies: the caller may write into them.
        return [suffix_out[n] if n in suffix_out else maps[n].copy() for n in self.output_names]

    # ------------------------------------------------------------------ plans

    def _plan_for(self, x: F32) -> tuple[_Plan | None, dict[str, Array] | None]:
        """The plan for ``x``'s size, building it (and running ``x``) the first time."""
        size = (int(x.shape[2]), int(x.shape[3]))
        with self._plan_lock:
            if size in self._plans:
                self._plans.move_to_end(size)
                return self._plans[size], None
            plan, maps = self._make_plan(x)
            self._plans[size] = plan
            while len(self._plans) > _MAX_PLANS:
                self._plans.popitem(last=False)
            return plan, maps

    def _make_plan(self, x: F32) -> tuple[_Plan | None, dict[str, Array] | None]:
        if self._prefix is None:  # pragma: no cover - callers check self.active
            return None, None
        h, w = int(x.shape[2]), int(x.shape[3])
        a = self.analysis
        try:
            lay = layout(a, h, w)
        except LayoutError as exc:
            _log.warning("layer cache: %dx%d not cached (%s); running the whole model", h, w, exc)
            return None, None
        pads_key = tuple(sorted(lay.same_pads.items()))
        session = self._sessions.get(pads_key)
        if session is None:
            proto = with_explicit_pads(self._prefix, lay.same_pads) if pads_key else self._prefix
            session = self._sessions[pads_key] = self._session(proto)
        outs = self._call(session, list(a.cut), {a.image: x})
        maps = dict(zip(a.cut, outs, strict=True))
        for name, arr in maps.items():
            if arr.ndim != 4 or tuple(arr.shape[2:]) != lay.sizes[name]:
                _log.warning(
                    "layer cache: %dx%d not cached (%s is %s, expected %s); "
                    "running the whole model",
                    h, w, name, arr.shape, lay.sizes[name],
                )  # fmt: skip
                return None, None
        plan = _Plan(
            layout=lay,
            session=session,
            cut=a.cut,
            groups=self._groups(lay, maps),
            full_s=0.0,
            cost=CropCostModel(0.0, 1.0),
        )
        plan.full_s = self._time(self._run_prefix, plan, x)
        cost = self._fixed_cost or self._costs.get(pads_key)
        if cost is None:
            cost = self._costs[pads_key] = self._measure_cost(plan, x)
        plan.cost = cost
        _log.info(
            "layer cache: %dx%d: alignment %s, full prefix %.2f ms, "
            "crop %.3f ms + %.2f ns/px; one crop stops paying at %.0f%% of the image",
            h, w, lay.align, plan.full_s * 1e3, cost.per_call_s * 1e3,
            cost.per_pixel_s * 1e9,
            100 * min(1.0, cost.break_even_area(plan.full_s) / (h * w)),
        )  # fmt: skip
        return plan, maps

    def _groups(self, lay: Layout, maps: dict[str, Array]) -> list[_Group]:
        block = self.cfg.block_size
        by_geometry: dict[tuple[Any, ...], list[str]] = {}
        for name in self.analysis.cut:
            by_geometry.setdefault((lay.fields[name], lay.sizes[name]), []).append(name)
        groups = []
        for (fields, size), names in by_geometry.items():
            fh, fw = fields
            rows = block_ranges(fh, size[0], lay.height, block)
            cols = block_ranges(fw, size[1], lay.width, block)
            touched = (
                np.maximum(rows[1] - rows[0] + 1, 0)[:, None]
                * np.maximum(cols[1] - cols[0] + 1, 0)[None, :]
            )
            ih, iw = fh.inside(lay.height, size[0]), fw.inside(lay.width, size[1])
            inside = np.zeros(size, dtype=bool)
            inside[ih[0] : ih[1], iw[0] : iw[1]] = True
            groups.append(
                _Group(
                    names=tuple(names),
                    fields=(fh, fw),
                    size=size,
                    channels=sum(int(maps[n].shape[1]) for n in names),
                    rows=rows,
                    cols=cols,
                    touched=touched,
                    inside=inside,
                    tile=(max(1, block // fh.jump), max(1, block // fw.jump)),
                )
            )
        return groups

    def _measure_cost(self, plan: _Plan, x: F32) -> CropCostModel:
        """Time crops of two sizes; fit the cost line through them and the full run."""
        lay = plan.layout
        group = plan.groups[0]
        n_h, n_w = group.size
        points = [(float(lay.height * lay.width), plan.full_s)]
        for frac in (0.0, 0.5):
            hh, ww = max(1, int(n_h * frac)), max(1, int(n_w * frac))
            y0, x0 = (n_h - hh) // 2, (n_w - ww) // 2
            crop = crop_for(
                (y0, y0 + hh, x0, x0 + ww),
                group.fields,
                (lay.height, lay.width),
                lay.align,
            )
            sub = np.ascontiguousarray(x[:, :, crop[0] : crop[1], crop[2] : crop[3]])
            secs = self._time(self._call, plan.session, list(plan.cut), {lay.image: sub})
            points.append((float(area(crop)), secs))
        return CropCostModel.fit(points)

    def _time(self, fn: Callable[..., object], *args: Any) -> float:
        """Best of three timed calls, after one untimed call."""
        fn(*args)  # the first call at a new size allocates; do not time it
        best = float("inf")
        for _ in range(3):
            start = self._clock()
            fn(*args)
            best = min(best, self._clock() - start)
        return best

    # ------------------------------------------------------------------ onnxruntime

    def _session(self, proto: onnx.ModelProto) -> Any:
        try:
            return self._ort.InferenceSession(
                proto.SerializeToString(),
                sess_options=self._session_options,
                providers=self._providers,
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            msg = f"onnxruntime cannot load the model: {exc}"
            raise ConfigError(msg) from exc

    def _run_prefix(self, plan: _Plan, x: F32) -> dict[str, Array]:
        outs = self._call(plan.session, list(plan.cut), {plan.layout.image: x})
        return dict(zip(plan.cut, outs, strict=True))

    @staticmethod
    def _call(session: Any, names: list[str] | None, feeds: dict[str, Array]) -> list[Array]:
        try:
            return list(session.run(names, feeds))
        except Exception as exc:  # onnxruntime raises its own untyped errors
            msg = f"onnxruntime failed: {exc}"
            raise InferenceError(msg) from exc

    @staticmethod
    def _as_input(image: Array) -> F32:
        x = np.asarray(image)
        if x.ndim != 4:
            msg = f"expected a (N, C, H, W) array, got shape {x.shape}"
            raise ValueError(msg)
        return np.ascontiguousarray(x, dtype=np.float32)


class BoundRunner:
    """One stream's view of a :class:`LayerCachedRunner` (see its ``bind``)."""

    def __init__(self, runner: LayerCachedRunner, stream: Hashable) -> None:
        self.runner = runner
        self.stream = stream

    def __call__(self, image: Array, level: Hashable = 0) -> tuple[Array, ...]:
        """The model's outputs for ``image``, using the state of ``(stream, level)``."""
        return tuple(self.runner.run((self.stream, level), image))


def _keep_outputs(proto: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """``proto`` reduced to the graph that computes ``names``.

    Raises:
        ConfigError: a name is not a tensor of the model.
    """
    import onnx.utils

    inputs = [
        i.name for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}
    ]
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
        out = onnx.utils.Extractor(inferred).extract_model(inputs, names)
    except (ValueError, onnx.shape_inference.InferenceError) as exc:
        msg = f"cannot keep outputs {names}: {exc}"
        raise ConfigError(msg) from exc
    del out.graph.value_info[:]  # keep the original's symbolic input shape only
    return out
