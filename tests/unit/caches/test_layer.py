"""Layer-level cache: receptive fields, split points, exact splicing, state.

Models are built with ``onnx.helper`` and run with real onnxruntime sessions;
every equality check compares the cached path with the unsplit model run on the
same frame.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import streamedge
from streamedge.caches.layer import (
    AxisField,
    AxisWindow,
    CropCostModel,
    Decision,
    LayerCache,
    LayerCacheConfig,
    LayerCachedRunner,
    LayoutError,
    StreamState,
    analyse,
    layout,
    split,
)
from streamedge.caches.layer.change import block_mse, diamond_search, mse_limit
from streamedge.caches.layer.regions import crop_for, crops_for, mask_rects, merge_crops
from streamedge.errors import ConfigError

F32 = npt.NDArray[np.float32]
# Crops always cheaper than a full run: the partial path is what is tested.
CHEAP = CropCostModel(per_call_s=0.0, per_pixel_s=1e-15)
EXACT = LayerCacheConfig(psnr_db=float("inf"), refresh_every=0)
TOL = 1e-4


# --- builders


class Net:
    """A tiny ONNX graph builder with seeded random weights."""

    def __init__(self, channels: int = 3, seed: int = 0, opset: int = 17) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.channels = {"x": channels}
        self.opset = opset
        self._n = 0

    def _name(self, op: str) -> str:
        self._n += 1
        return f"{op.lower()}{self._n}"

    def const(self, value: npt.NDArray[Any]) -> str:
        name = self._name("k")
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def conv(self, x: str, cout: int, k: int, **attrs: Any) -> str:
        cin = self.channels[x]
        kh, kw = (k, k)
        w = self.const(
            (self.rng.standard_normal((cout, cin, kh, kw)) / np.sqrt(cin * kh * kw)).astype(
                np.float32
            )
        )
        b = self.const((self.rng.standard_normal(cout) * 0.1).astype(np.float32))
        attrs.setdefault("kernel_shape", [kh, kw])
        return self.op("Conv", [x, w, b], cout, **attrs)

    def op(self, op: str, inputs: list[str], cout: int | None = None, **attrs: Any) -> str:
        out = self._name(op)
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        self.channels[out] = cout if cout is not None else self.channels[inputs[0]]
        return out

    def prelu(self, x: str) -> str:
        slope = self.const(
            (self.rng.uniform(0.1, 0.3, (self.channels[x], 1, 1))).astype(np.float32)
        )
        return self.op("PRelu", [x, slope])

    def model(self, *outputs: str) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "net",
            [
                helper.make_tensor_value_info(
                    "x", TensorProto.FLOAT, ["N", self.channels["x"], "H", "W"]
                )
            ],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
            initializer=self.inits,
        )
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        return m


def pnet_like(seed: int = 0) -> onnx.ModelProto:
    """Conv/PReLU/MaxPool(ceil) then two 1x1 heads, channel softmax: all local."""
    n = Net(seed=seed)
    h = n.prelu(n.conv("x", 6, 3))
    h = n.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)
    h = n.prelu(n.conv(h, 8, 3))
    h = n.prelu(n.conv(h, 8, 3))
    prob = n.op("Softmax", [n.conv(h, 2, 1)], axis=1)
    reg = n.conv(h, 4, 1)
    return n.model(prob, reg)


def padded_strided(seed: int = 0) -> onnx.ModelProto:
    """Padding and stride everywhere, a residual Add and a constant scale."""
    n = Net(seed=seed)
    a = n.op("Relu", [n.conv("x", 6, 3, pads=[1, 1, 1, 1])])
    b = n.conv(a, 6, 3, strides=[2, 2], pads=[1, 1, 1, 1])
    c = n.op("MaxPool", [b], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    d = n.conv(c, 6, 3, pads=[1, 1, 1, 1])
    e = n.op("Add", [c, d])  # residual: fields of different extent, same jump
    scale = n.const(np.full((1, 6, 1, 1), 0.5, dtype=np.float32))
    f = n.op("Mul", [e, scale])
    return n.model(f)


def with_suffix(seed: int = 0) -> onnx.ModelProto:
    """A conv prefix followed by Flatten and Gemm on a fixed-size input."""
    n = Net(seed=seed)
    a = n.op("Relu", [n.conv("x", 4, 3, strides=[2, 2], pads=[1, 1, 1, 1])])
    b = n.conv(a, 2, 3, pads=[1, 1, 1, 1])
    flat = n.op("Flatten", [b], axis=1)
    w = n.const((n.rng.standard_normal((2 * 12 * 16, 5)) * 0.05).astype(np.float32))
    out = n.op("Gemm", [flat, w])
    m = n.model(out)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[2].Clear()
    dims[2].dim_value = 23
    dims[3].Clear()
    dims[3].dim_value = 31
    return m


def same_dilated(seed: int = 0) -> onnx.ModelProto:
    """SAME_UPPER / SAME_LOWER auto-padding, dilation and an explicit Pad."""
    n = Net(seed=seed)
    a = n.conv("x", 4, 4, strides=[2, 2], auto_pad="SAME_UPPER")
    b = n.conv(a, 4, 3, dilations=[2, 2], pads=[2, 1, 2, 1])
    pads = n.const(np.array([0, 0, 1, 2, 0, 0, 2, 1], dtype=np.int64))
    c = n.op("Pad", [b, pads], mode="constant")
    d = n.op("AveragePool", [c], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_LOWER")
    return n.model(n.op("Sigmoid", [d]))


MODELS = {
    "pnet_like": pnet_like,
    "padded_strided": padded_strided,
    "same_dilated": same_dilated,
}


def frame(shape: tuple[int, ...], seed: int = 0) -> F32:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def assert_same(got: list[npt.NDArray[Any]], want: list[npt.NDArray[Any]]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, atol=TOL, rtol=0)


# --- fields


def test_field_chain_conv_conv_pool() -> None:
    n = Net()
    a = n.conv("x", 4, 3, pads=[1, 1, 1, 1])
    b = n.conv(a, 4, 3, strides=[2, 2])
    c = n.op("MaxPool", [b], kernel_shape=[2, 2], strides=[2, 2])
    lay = layout(analyse(n.model(c)), 40, 50)
    # conv3 s1 p1: jump 1, start -1, extent 3
    assert lay.fields[a] == (AxisField(1, -1, 3),) * 2
    # conv3 s2 p0: jump 2, start -1, extent 3 + 2*1 = 5
    assert lay.fields[b] == (AxisField(2, -1, 5),) * 2
    # maxpool2 s2: jump 4, start -1, extent 5 + 1*2 = 7
    assert lay.fields[c] == (AxisField(4, -1, 7),) * 2
    assert lay.sizes[c] == (9, 12)
    assert lay.align == (4, 4)


def test_field_dilation_and_asymmetric_pads() -> None:
    n = Net()
    a = n.conv("x", 4, 3, dilations=[2, 1], pads=[2, 1, 2, 1])
    b = n.conv(a, 4, 3, strides=[2, 3], pads=[1, 0, 0, 0])
    lay = layout(analyse(n.model(b)), 30, 30)
    assert lay.fields[a] == (AxisField(1, -2, 5), AxisField(1, -1, 3))
    assert lay.fields[b] == (AxisField(2, -3, 7), AxisField(3, -1, 5))


@pytest.mark.parametrize(
    ("auto_pad", "size", "begin", "end"),
    [
        ("SAME_UPPER", 10, 1, 1),  # out 5, total pad 2
        ("SAME_UPPER", 11, 1, 2),  # out 6, total pad 3: the odd pixel at the end
        ("SAME_LOWER", 11, 2, 1),  # ... or at the beginning
        ("VALID", 11, 0, 0),
    ],
)
def test_field_auto_pad(auto_pad: str, size: int, begin: int, end: int) -> None:
    n = Net()
    a = n.conv("x", 2, 4, strides=[2, 2], auto_pad=auto_pad)
    m = n.model(a)
    lay = layout(analyse(m), size, size)
    (wh, ww) = lay.windows[0] or (None, None)
    assert wh == ww == AxisWindow(4, 2, 1, begin, end)
    assert lay.fields[a][0] == AxisField(2, -begin, 4)
    got = LayerCachedRunner(m).run_plain(frame((1, 3, size, size)))[0]
    assert got.shape[2:] == lay.sizes[a]


@pytest.mark.parametrize("size", [7, 8, 9, 10, 13])
def test_ceil_mode_sizes_match_onnxruntime(size: int) -> None:
    n = Net()
    a = n.op(
        "MaxPool",
        ["x"],
        kernel_shape=[3, 3],
        strides=[2, 2],
        pads=[1, 1, 1, 1],
        ceil_mode=1,
    )
    b = n.op("MaxPool", [a], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)
    m = n.model(b)
    lay = layout(analyse(m), size, size + 3)
    got = LayerCachedRunner(m).run_plain(frame((1, 3, size, size + 3)))[0]
    assert got.shape[2:] == lay.sizes[b]


def _linear_chain(kind: str) -> onnx.ModelProto:
    n = Net(seed=3)
    if kind == "plain":
        h = n.conv(n.conv("x", 3, 3, pads=[1, 1, 1, 1]), 3, 3, strides=[2, 2])
    elif kind == "dilated":
        h = n.conv(n.conv("x", 3, 3, dilations=[2, 2], pads=[2, 2, 2, 2]), 3, 2, strides=[2, 2])
    else:
        h = n.conv(
            n.conv("x", 3, 4, strides=[2, 2], auto_pad="SAME_UPPER"),
            3,
            3,
            strides=[3, 3],
        )
    return n.model(h)


@pytest.mark.parametrize("kind", ["plain", "dilated", "same"])
def test_field_matches_measured_dependency(kind: str) -> None:
    """Perturb one pixel at a time: exactly the outputs the field predicts move."""
    m = _linear_chain(kind)
    name = m.graph.output[0].name
    lay = layout(analyse(m), 17, 19)
    fh, fw = lay.fields[name]
    nh, nw = lay.sizes[name]
    runner = LayerCachedRunner(m)
    x = frame((1, 3, 17, 19))
    base = runner.run_plain(x)[0]
    for y, xx in [(0, 0), (16, 18), (8, 9), (0, 18), (5, 0), (16, 3)]:
        bumped = x.copy()
        bumped[0, :, y, xx] += 100.0
        moved = np.abs(runner.run_plain(bumped)[0] - base).max(axis=(0, 1)) > 1e-3
        ys, xs = np.nonzero(moved)
        y0, y1 = fh.affected(y, y + 1, nh)
        x0, x1 = fw.affected(xx, xx + 1, nw)
        # every moved output is predicted, and the prediction is tight
        assert ys.min() == y0
        assert ys.max() == y1 - 1
        assert xs.min() == x0
        assert xs.max() == x1 - 1


# --- split points


def _head(kind: str) -> tuple[onnx.ModelProto, str]:
    n = Net(opset=11 if kind == "softmax_opset11" else 17)
    local = n.op("Relu", [n.conv("x", 4, 3, pads=[1, 1, 1, 1])])
    if kind == "flatten_gemm":
        flat = n.op("Flatten", [local], axis=1)
        w = n.const(np.ones((4 * 8 * 8, 3), dtype=np.float32))
        out = n.op("Gemm", [flat, w])
    elif kind == "global_pool":
        out = n.op("GlobalAveragePool", [local])
    elif kind == "matmul":
        out = n.op("MatMul", [local, n.const(np.ones((8, 2), dtype=np.float32))])
    elif kind == "spatial_softmax":
        out = n.op("Softmax", [local], axis=-1)
    elif kind == "softmax_opset11":
        out = n.op("Softmax", [local], axis=1)  # flattens C, H, W together before 13
    elif kind == "varying_constant":
        out = n.op("Add", [local, n.const(np.ones((4, 8, 8), dtype=np.float32))])
    else:
        out = n.op("Pad", [local, n.const(np.array([0, 0, 1, 1, 0, 0, 1, 1]))], mode="reflect")
    m = n.model(out)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    for i in (2, 3):
        dims[i].Clear()
        dims[i].dim_value = 8
    return m, local


@pytest.mark.parametrize(
    "kind",
    [
        "flatten_gemm",
        "global_pool",
        "matmul",
        "spatial_softmax",
        "softmax_opset11",
        "varying_constant",
        "reflect_pad",
    ],
)
def test_prefix_stops_at_position_mixing_op(kind: str) -> None:
    m, local = _head(kind)
    a = analyse(m)
    assert a.splittable
    assert a.cut == (local,)
    assert a.suffix_outputs == (m.graph.output[0].name,)
    assert [s.op for s in a.steps] == ["Conv", "Relu"]
    prefix, suffix = split(m, a)
    assert suffix is not None
    assert [o.name for o in prefix.graph.output] == [local]
    assert [i.name for i in suffix.graph.input] == [local]


def test_local_ops_extend_the_prefix() -> None:
    n = Net()
    a = n.conv("x", 4, 3)
    b = n.op("BatchNormalization", [a, *(n.const(np.ones(4, np.float32)) for _ in range(4))])
    c = n.op(
        "Clip",
        [b, n.const(np.array(0.0, np.float32)), n.const(np.array(6.0, np.float32))],
    )
    d = n.op("Softmax", [c], axis=1)
    e = n.op("Concat", [d, c], 8, axis=1)
    f = n.op("Pad", [e, n.const(np.array([0, 0, 1, 1, 0, 0, 1, 1]))], mode="constant")
    g = n.op("AveragePool", [f], kernel_shape=[2, 2], strides=[2, 2])
    a_ = analyse(n.model(g))
    assert a_.splittable
    assert [s.op for s in a_.steps] == [
        "Conv", "BatchNormalization", "Clip", "Softmax", "Concat", "Pad", "AveragePool",
    ]  # fmt: skip
    assert a_.cut == (g,)
    assert a_.suffix_outputs == ()


def test_whole_model_local_has_no_suffix() -> None:
    m = pnet_like()
    a = analyse(m)
    assert a.splittable
    assert a.suffix_outputs == ()
    assert set(a.cut) == {o.name for o in m.graph.output}
    _, suffix = split(m, a)
    assert suffix is None


@pytest.mark.parametrize("kind", ["no_conv", "two_inputs"])
def test_unsplittable_model_falls_back(kind: str, caplog: pytest.LogCaptureFixture) -> None:
    n = Net()
    if kind == "no_conv":
        out = n.op("GlobalMaxPool", [n.op("Relu", ["x"])])
        m = n.model(out)
    else:
        out = n.op("Add", [n.conv("x", 3, 3), "y"])
        m = n.model(out)
        m.graph.input.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, None))
    with caplog.at_level(logging.INFO, logger="streamedge.caches.layer.runner"):
        runner = LayerCachedRunner(m, EXACT)
    assert not runner.active
    assert [r.getMessage() for r in caplog.records if "layer cache off" in r.getMessage()]
    if kind == "no_conv":
        x = frame((1, 3, 9, 9))
        assert_same(runner.run("s", x), runner.run_plain(x))
        assert_same(runner.run("s", x), runner.run_plain(x))
        stats = runner.stats()
        assert stats.fallbacks == 2
        assert stats.full_runs == 0


# --- splicing


def _changes(x: F32, rng: np.random.Generator, count: int, max_side: int) -> F32:
    x = x.copy()
    _, _, h, w = x.shape
    for _ in range(count):
        hh, ww = rng.integers(1, max_side + 1, size=2)
        y0 = int(rng.integers(-hh + 1, h))
        x0 = int(rng.integers(-ww + 1, w))
        x[:, :, max(y0, 0) : y0 + hh, max(x0, 0) : x0 + ww] += rng.standard_normal()
    return x


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize(("h", "w", "block"), [(37, 53, 10), (40, 40, 7)])
def test_spliced_maps_equal_full_computation(name: str, h: int, w: int, block: int) -> None:
    m = MODELS[name]()
    cfg = EXACT.model_copy(update={"block_size": block})
    runner = LayerCachedRunner(m, cfg, cost_model=CHEAP)
    rng = np.random.default_rng(1)
    x = frame((1, 3, h, w))
    assert_same(runner.run("cam", x), runner.run_plain(x))
    for _ in range(12):
        x = _changes(x, rng, count=int(rng.integers(1, 4)), max_side=12)
        assert_same(runner.run("cam", x), runner.run_plain(x))
    stats = runner.stats()
    assert stats.full_runs == 1
    assert stats.partial_runs == 12
    assert stats.errors == 0
    assert 0.0 < stats.reused_fraction < 1.0


@pytest.mark.parametrize("name", sorted(MODELS))
def test_corner_and_border_pixels(name: str) -> None:
    m = MODELS[name]()
    runner = LayerCachedRunner(m, EXACT, cost_model=CHEAP)
    h, w = 31, 45
    x = frame((1, 3, h, w))
    runner.run("cam", x)
    for y, xx in [
        (0, 0),
        (0, w - 1),
        (h - 1, 0),
        (h - 1, w - 1),
        (0, 20),
        (h - 1, 21),
        (15, 0),
        (16, w - 1),
    ]:
        x = x.copy()
        x[0, :, y, xx] += 3.0
        assert_same(runner.run("cam", x), runner.run_plain(x))
    assert runner.stats().partial_runs == 8


def test_suffix_runs_on_spliced_maps() -> None:
    m = with_suffix()
    runner = LayerCachedRunner(m, EXACT, cost_model=CHEAP)
    assert runner.analysis.suffix_outputs
    rng = np.random.default_rng(2)
    x = frame((1, 3, 23, 31))
    runner.run("cam", x)
    for _ in range(6):
        x = _changes(x, rng, count=1, max_side=6)
        assert_same(runner.run("cam", x), runner.run_plain(x))
    assert runner.stats().partial_runs == 6


@st.composite
def _chains(draw: st.DrawFn) -> tuple[onnx.ModelProto, int, int]:
    n = Net(seed=draw(st.integers(0, 1000)))
    h = "x"
    for _ in range(draw(st.integers(1, 3))):
        k = draw(st.integers(1, 4))
        s = draw(st.integers(1, 3))
        d = draw(st.integers(1, 2))
        p = [draw(st.integers(0, k - 1)) for _ in range(4)]
        pad: dict[str, Any] = {"pads": p}
        auto = draw(st.sampled_from(["NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER"]))
        if auto != "NOTSET" and d == 1:  # onnxruntime: no dilation with SAME
            pad = {"auto_pad": auto}
        if draw(st.booleans()):
            h = n.conv(h, 3, k, strides=[s, s], dilations=[d, d], **pad)
        else:
            h = n.op(
                "MaxPool", [h], kernel_shape=[k, k], strides=[s, s], pads=p,
                ceil_mode=int(draw(st.booleans())), dilations=[d, d],
            )  # fmt: skip
    size = st.integers(24, 40)
    return n.model(h), draw(size), draw(size)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(chain=_chains(), seed=st.integers(0, 2**16))
def test_random_chains_splice_exactly(chain: tuple[onnx.ModelProto, int, int], seed: int) -> None:
    m, h, w = chain
    try:
        layout(analyse(m), h, w)
    except LayoutError:
        assume(False)  # the model itself cannot run on so small an image
    runner = LayerCachedRunner(m, EXACT, cost_model=CHEAP)
    rng = np.random.default_rng(seed)
    x = frame((1, 3, h, w), seed)
    runner.run("s", x)
    for _ in range(3):
        x = _changes(x, rng, count=2, max_side=8)
        assert_same(runner.run("s", x), runner.run_plain(x))
    stats = runner.stats()
    assert stats.errors == 0
    assert stats.partial_runs == 3


def test_crop_validity_covers_requested_positions() -> None:
    lay = layout(analyse(padded_strided()), 41, 57)
    name = next(iter(lay.fields.keys() - {"x"} - {s.inputs[0] for s in lay.steps[1:]}))
    fh, fw = lay.fields[name]
    nh, nw = lay.sizes[name]
    for rect in [(0, 1, 0, 1), (nh - 1, nh, nw - 1, nw), (3, 5, 2, 9), (0, nh, 4, 5)]:
        crop = crop_for(rect, (fh, fw), (41, 57), lay.align)
        assert crop[0] % lay.align[0] == 0
        assert crop[2] % lay.align[1] == 0
        vy0, vy1, vx0, vx1 = lay.valid(crop, (name,))[name]
        assert vy0 <= rect[0]
        assert rect[1] <= vy1
        assert vx0 <= rect[2]
        assert rect[3] <= vx1


# --- cadence, cost


def test_full_refresh_every_n_frames() -> None:
    cfg = EXACT.model_copy(update={"refresh_every": 3})
    runner = LayerCachedRunner(pnet_like(), cfg, cost_model=CHEAP)
    rng = np.random.default_rng(0)
    x = frame((1, 3, 30, 30))
    fulls = []
    for _ in range(8):
        x = _changes(x, rng, count=1, max_side=4)
        before = runner.stats().full_runs
        assert_same(runner.run("s", x), runner.run_plain(x))
        fulls.append(runner.stats().full_runs - before)
    assert fulls == [1, 0, 0, 1, 0, 0, 1, 0]
    assert runner.stats().refreshes == 2


def test_too_costly_change_runs_in_full_and_backs_off() -> None:
    slow_crops = CropCostModel(per_call_s=10.0, per_pixel_s=1e-9)
    runner = LayerCachedRunner(pnet_like(), EXACT, cost_model=slow_crops)
    rng = np.random.default_rng(0)
    x = frame((1, 3, 30, 30))
    runner.run("s", x)
    kinds = []
    # changed, same, changed, same, same, same: after each costly frame the next
    # 1, then 2 frames run in full without change detection
    for change in (True, False, True, False, False, False):
        if change:
            x = _changes(x, rng, count=1, max_side=4)
        before = runner.stats()
        assert_same(runner.run("s", x), runner.run_plain(x))
        after = runner.stats()
        kinds.append("cost" if after.cost_full_runs > before.cost_full_runs else "partial")
    assert kinds == ["cost", "cost", "cost", "cost", "cost", "partial"]
    stats = runner.stats()
    assert stats.unchanged_frames == 1
    assert stats.crops == 0


def _identity_two_channels() -> onnx.ModelProto:
    """y[:, c] = x for c in 0, 1 (a 1x1 convolution with unit weights)."""
    w = numpy_helper.from_array(np.ones((2, 1, 1, 1), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[1, 1])],
        "ident",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(
    ("margin", "recomputed"),
    [(None, "none"), (0.0, "passing"), (0.35, "all")],
)
def test_recheck_recomputes_positions_near_the_decision(
    margin: float | None, recomputed: str
) -> None:
    # 0 dB: every block counts as unchanged, so only the recheck recomputes anything.
    cfg = LayerCacheConfig(psnr_db=0.0, input_range=1.0, refresh_every=0, recheck_margin=margin)
    decision = Decision("y", 1, 0.5)
    runner = LayerCachedRunner(_identity_two_channels(), cfg, cost_model=CHEAP, decision=decision)
    first = np.full((1, 1, 20, 20), 0.2, dtype=np.float32)
    first[..., :2, :2] = 0.6  # passes the threshold
    runner.run("s", first)
    (y,) = runner.run("s", np.full_like(first, 0.9))
    fresh = np.isclose(y[0, 1], 0.9)
    np.testing.assert_array_equal(y[0, 0], y[0, 1])  # whole positions are recomputed
    if recomputed == "none":
        assert not fresh.any()
    elif recomputed == "passing":
        # the passing cells, and the rest of their 10 x 10 tile's crop, no more
        assert fresh[:10, :10].all()
        assert not fresh[10:].any()
        assert not fresh[:, 10:].any()
    else:
        assert fresh.all()
    rechecked = {"none": 0, "passing": 4, "all": 400}[recomputed]
    assert runner.stats().rechecked_positions == rechecked
    assert runner.stats().partial_runs == 1


def test_decision_on_a_tensor_the_prefix_does_not_cut_is_an_error() -> None:
    with pytest.raises(ConfigError, match="decision output"):
        LayerCachedRunner(pnet_like(), EXACT, decision=Decision("nope", 1, 0.5))


def test_measured_cost_model_is_positive_and_grows_with_area() -> None:
    runner = LayerCachedRunner(pnet_like(), EXACT)
    cost = runner.warmup(frame((1, 3, 64, 80)))
    assert cost is not None
    assert cost.per_pixel_s > 0
    assert cost.per_call_s >= 0
    assert cost.cost(64 * 80) > cost.cost(10)


def test_cost_fit_recovers_a_line() -> None:
    fit = CropCostModel.fit([(100.0, 0.002), (1000.0, 0.011), (10000.0, 0.101)])
    assert fit.per_call_s == pytest.approx(0.001, abs=1e-6)
    assert fit.per_pixel_s == pytest.approx(1e-5, rel=1e-3)
    assert fit.break_even_area(0.051) == pytest.approx(5000, rel=1e-3)
    noisy = CropCostModel.fit([(100.0, 0.005), (10000.0, 0.004)])
    assert noisy.per_pixel_s > 0
    assert noisy.per_call_s >= 0


# --- change detection


def test_block_mse_matches_direct_computation() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 23, 17)).astype(np.float32)
    ref = rng.standard_normal((3, 23, 17)).astype(np.float32)
    got = block_mse(x, ref, 10)
    assert got.shape == (3, 2)
    for by in range(3):
        for bx in range(2):
            sl = (
                slice(None),
                slice(by * 10, by * 10 + 10),
                slice(bx * 10, bx * 10 + 10),
            )
            want = float(((x[sl].astype(np.float64) - ref[sl]) ** 2).mean())
            assert got[by, bx] == pytest.approx(want, rel=1e-6)


def test_psnr_threshold_decides_reuse() -> None:
    # input_range 255, 20 dB: a block is unchanged up to an MSE of 650.25.
    assert mse_limit(20.0, 255.0) == pytest.approx(650.25)
    assert mse_limit(float("inf"), 255.0) == 0.0
    # input_range 5, 20 dB: unchanged up to an MSE of 0.25
    cfg = LayerCacheConfig(psnr_db=20.0, input_range=5.0, refresh_every=0)
    runner = LayerCachedRunner(pnet_like(), cfg, cost_model=CHEAP)
    x = frame((1, 3, 30, 30))
    first = runner.run("s", x)
    small = x.copy()
    small[:, :, 0:10, 0:10] += 0.4  # MSE 0.16: below the threshold, reused
    assert_same(runner.run("s", small), first)
    big = small.copy()
    big[:, :, 20:30, 20:30] += 0.6  # MSE 0.36: recomputed
    got = runner.run("s", big)
    want = runner.run_plain(big)
    # pnet_like's field is jump 2, extent 12: positions >= 5 never read pixels < 10,
    # positions < 5 never read pixels >= 20.
    for g, w, f in zip(got, want, first, strict=True):
        np.testing.assert_allclose(g[:, :, 5:, 5:], w[:, :, 5:, 5:], atol=TOL, rtol=0)
        np.testing.assert_array_equal(g[:, :, :5, :5], f[:, :, :5, :5])
        assert np.abs(w[:, :, :5, :5] - f[:, :, :5, :5]).max() > 1e-3


def test_diamond_search_finds_lattice_displacement() -> None:
    ref = _texture(60, 60)[0]
    x = np.roll(ref, shift=(-4, 6), axis=(1, 2))  # x[p] = ref[p + (4, -6)]
    blocks = np.array([[2, 2], [3, 1], [2, 3]], dtype=np.int64)
    disp, ok = diamond_search(x, ref, blocks, block=10, step=(2, 2), search_range=8, limit=1e-6)
    assert ok.all()
    assert disp.tolist() == [[4, -6]] * 3
    # off the lattice (odd displacement with step 2) nothing matches exactly
    x2 = np.roll(ref, shift=(-3, 0), axis=(1, 2))
    _, ok2 = diamond_search(x2, ref, blocks, block=10, step=(2, 2), search_range=8, limit=1e-6)
    assert not ok2.any()


def _texture(h: int, w: int, seed: int = 0) -> F32:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([np.sin(yy / 5.0) + np.cos(xx / 7.0), np.sin((xx + yy) / 6.0), np.cos(xx / 4.0)])
    return (img * 60 + rng.standard_normal((3, h, w)) * 4).astype(np.float32)[None]


@pytest.mark.parametrize(("shift", "copies"), [((4, -8), True), ((1, 0), False)])
def test_camera_motion_copies_only_stride_multiples(shift: tuple[int, int], copies: bool) -> None:
    cfg = LayerCacheConfig(
        psnr_db=60.0,
        input_range=255.0,
        refresh_every=0,
        diamond_search=True,
        search_range=12,
    )
    m = padded_strided()
    runner = LayerCachedRunner(m, cfg, cost_model=CHEAP)
    big = _texture(120, 140)
    x = np.ascontiguousarray(big[:, :, 20:100, 20:120])
    runner.run("s", x)
    dy, dx = shift
    # content moves by -shift: the new frame at p shows the old frame at p + shift
    x2 = np.ascontiguousarray(big[:, :, 20 + dy : 100 + dy, 20 + dx : 120 + dx])
    assert_same(runner.run("s", x2), runner.run_plain(x2))
    stats = runner.stats()
    assert stats.partial_runs == 1
    assert (stats.copied_positions > 0) is copies


# --- regions


def test_ring_becomes_four_bands() -> None:
    mask = np.zeros((20, 20), dtype=bool)
    mask[2:18, 2:18] = True
    mask[5:15, 5:15] = False
    rects = mask_rects(mask, (1, 1))
    assert len(rects) == 4
    cover = np.zeros_like(mask)
    for y0, y1, x0, x1 in rects:
        assert not cover[y0:y1, x0:x1].any()  # disjoint
        cover[y0:y1, x0:x1] = True
    assert (cover == mask).all()


def test_mask_rects_tiles_cover_mask() -> None:
    rng = np.random.default_rng(0)
    mask = rng.random((33, 47)) > 0.9
    cover = np.zeros_like(mask)
    for y0, y1, x0, x1 in mask_rects(mask, (4, 5)):
        cover[y0:y1, x0:x1] = True
    assert cover[mask].all()


def test_merge_crops_by_cost() -> None:
    far = [(0, 10, 0, 10), (0, 10, 90, 100)]
    assert len(merge_crops(far, CropCostModel(0.0, 1.0), 8)) == 2
    assert merge_crops(far, CropCostModel(1e6, 1.0), 8) == [(0, 10, 0, 100)]
    # overlapping by 25 of 100 pixels: the box (225) is more work than both (200)
    overlapping = [(0, 10, 0, 10), (5, 15, 5, 15)]
    assert len(merge_crops(overlapping, CropCostModel(0.0, 1.0), 8)) == 2
    nearly_same = [(0, 10, 0, 10), (1, 11, 0, 10)]
    assert merge_crops(nearly_same, CropCostModel(0.0, 1.0), 8) == [(0, 11, 0, 10)]
    many = [(0, 2, 10 * i, 10 * i + 2) for i in range(10)]
    assert len(merge_crops(many, CropCostModel(0.0, 1.0), 3)) == 3


@settings(max_examples=60, deadline=None)
@given(
    crops=st.lists(
        st.tuples(
            st.integers(0, 80),
            st.integers(1, 20),
            st.integers(0, 80),
            st.integers(1, 20),
        ),
        min_size=1,
        max_size=25,
    ),
    per_call=st.sampled_from([0.0, 1.0, 100.0]),
    max_crops=st.integers(1, 6),
)
def test_merged_crops_cover_every_crop(
    crops: list[tuple[int, int, int, int]], per_call: float, max_crops: int
) -> None:
    rects = [(y, y + h, x, x + w) for y, h, x, w in crops]
    merged = merge_crops(rects, CropCostModel(per_call, 1.0), max_crops)
    assert 1 <= len(merged) <= max_crops
    for y0, y1, x0, x1 in rects:
        assert any(a <= y0 and y1 <= b and c <= x0 and x1 <= d for a, b, c, d in merged)


def test_vectorised_crops_match_scalar() -> None:
    lay = layout(analyse(same_dilated()), 45, 38)
    out = same_dilated().graph.output[0].name
    fields, (nh, nw) = lay.fields[out], lay.sizes[out]
    rects = [(0, 1, 0, 1), (0, nh, 0, nw), (2, 4, 1, 3), (nh - 1, nh, nw - 2, nw)]
    want = [list(crop_for(r, fields, (45, 38), lay.align)) for r in rects]
    got = crops_for(np.array(rects, dtype=np.int64), fields, (45, 38), lay.align)
    assert got.tolist() == want


# --- state


def _state(nbytes: int) -> StreamState:
    return StreamState(
        shape=(1, 1, 1, nbytes // 4),
        reference=np.zeros(nbytes // 4, dtype=np.float32),
        maps={},
    )


def test_layer_cache_evicts_least_recently_used_by_bytes() -> None:
    cache = LayerCache(max_bytes=1000)
    assert cache.put("a", _state(400))
    assert cache.put("b", _state(400))
    assert cache.get("a") is not None  # a is now the most recently used
    assert cache.put("c", _state(400))
    assert "b" not in cache
    assert "a" in cache
    assert "c" in cache
    assert cache.nbytes == 800
    assert cache.evictions == 1
    assert not cache.put("huge", _state(4000))
    assert cache.rejected == 1
    assert cache.put("a", _state(200))  # re-accounting a key replaces its bytes
    assert cache.nbytes == 600


def test_runner_state_is_bounded_and_keys_are_separate() -> None:
    m = pnet_like()
    probe = LayerCachedRunner(m, EXACT, cost_model=CHEAP)
    probe.run("big", frame((1, 3, 30, 30)))
    big = probe.stats().cached_bytes
    probe.run("small", frame((1, 3, 21, 21)))
    small = probe.stats().cached_bytes - big
    budget = big + small + small // 2
    runner = LayerCachedRunner(m, EXACT.model_copy(update={"max_bytes": budget}), cost_model=CHEAP)
    # a pyramid: one key per (stream, scale), each with its own size
    scales = {("cam", 0): (30, 30), ("cam", 1): (21, 21), ("cam2", 0): (30, 30)}
    frames = {k: frame((1, 3, *hw), seed=i) for i, (k, hw) in enumerate(scales.items())}
    for key, x in frames.items():
        runner.run(key, x)
    stats = runner.stats()
    assert stats.streams == 2
    assert stats.evictions == 1
    assert stats.cached_bytes <= budget
    assert ("cam", 0) not in runner.cache  # the least recently used went first
    # the evicted key starts over with a full run, the others go on partially
    for key, x in frames.items():
        x2 = x.copy()
        x2[:, :, 3:6, 3:6] += 1.0
        assert_same(runner.run(key, x2), runner.run_plain(x2))
    assert runner.stats().first_runs >= 4


def test_batch_or_disabled_runs_whole_model() -> None:
    m = pnet_like()
    runner = LayerCachedRunner(m, EXACT, cost_model=CHEAP)
    xb = frame((2, 3, 20, 20))
    assert_same(runner.run("s", xb), runner.run_plain(xb))
    off = LayerCachedRunner(m, LayerCacheConfig(enabled=False))
    assert not off.active
    x = frame((1, 3, 20, 20))
    assert_same(off.run("s", x), off.run_plain(x))
    assert runner.stats().fallbacks == 1
    assert off.stats().fallbacks == 1


def test_stats_as_dict_is_json_ready() -> None:
    runner = LayerCachedRunner(pnet_like(), EXACT, cost_model=CHEAP)
    x = frame((1, 3, 20, 20))
    runner.run("s", x)
    runner.run("s", x)
    d = runner.stats().as_dict()
    assert d["frames"] == 2
    assert d["unchanged_frames"] == 1
    assert d["reused_fraction"] == pytest.approx(0.5)


# --- outputs, binding, the real PNet


def test_kept_outputs_and_bound_runner() -> None:
    m = pnet_like()
    prob, reg = (o.name for o in m.graph.output)
    runner = LayerCachedRunner(m, EXACT, outputs=[reg, prob], cost_model=CHEAP)
    assert runner.output_names == (reg, prob)
    pnet = runner.bind("cam")
    x = frame((1, 3, 26, 34))
    for level, scale in enumerate((1.0, 0.5)):
        xs = np.ascontiguousarray(x[:, :, :: int(1 / scale), :: int(1 / scale)])
        got = pnet(xs, level)
        assert isinstance(got, tuple)
        assert_same(list(got), runner.run_plain(xs))
    assert ("cam", 0) in runner.cache
    assert ("cam", 1) in runner.cache
    with pytest.raises(ConfigError, match="nope"):
        LayerCachedRunner(m, outputs=["nope"])


PNET = Path(streamedge.__file__).parent / "models" / "data" / "mtcnn" / "pnet.onnx"


@pytest.mark.skipif(not PNET.exists(), reason="the MTCNN export is not on this branch")
def test_real_pnet_is_entirely_local_and_splices_exactly() -> None:
    runner = LayerCachedRunner(PNET, EXACT, outputs=["reg", "prob"], cost_model=CHEAP)
    a = runner.analysis
    assert a.splittable
    assert a.suffix_outputs == ()
    assert set(a.cut) == {"reg", "prob"}
    lay = layout(a, 120, 160)
    # conv3 > pool2 s2 (ceil) > conv3 > conv3 > 1x1 heads: 12-pixel cells every 2 pixels
    assert lay.fields["prob"] == (AxisField(2, 0, 12),) * 2
    rng = np.random.default_rng(0)
    x = frame((1, 3, 120, 160)) * 0.5
    runner.run("cam", x)
    for _ in range(5):
        x = _changes(x, rng, count=2, max_side=15)
        assert_same(runner.run("cam", x), runner.run_plain(x))
    assert runner.stats().partial_runs == 5


# --- config, imports


def test_config_fields_are_documented_and_strict() -> None:
    for name, info in LayerCacheConfig.model_fields.items():
        assert info.description, name
    with pytest.raises(ValueError, match="extra"):
        LayerCacheConfig.model_validate({"blocks": 10})
    with pytest.raises(ValueError, match="block_size"):
        LayerCacheConfig(block_size=1)


def test_heavy_imports_are_lazy() -> None:
    code = (
        "import sys, streamedge.caches.layer, streamedge.caches.layer_config; "
        "print(sorted(m for m in ('onnx', 'onnxruntime', 'cv2') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
