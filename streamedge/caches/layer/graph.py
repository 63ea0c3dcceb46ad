"""Find the spatially local prefix of an ONNX model and split the model there.

A tensor is *local* when each of its spatial positions depends only on a
bounded window of image pixels, the same window shape everywhere (up to the
image border, where the model's own padding applies). The image is local;
convolution, pooling and constant padding of a local tensor are local; a
pointwise operator (activation, batch norm, channel softmax, arithmetic with a
constant that does not vary over height and width, or with another local tensor
that advances at the same pace) of local tensors is local. Anything else (Gemm,
MatMul, Flatten, Reshape, Transpose, global pooling, Resize, a softmax over a
spatial axis, instance norm...) mixes positions, and the prefix stops there.

The *cut* is the set of local tensors the rest of the model (the suffix) reads,
plus the local graph outputs. The layer cache keeps the cut tensors of the last
frame and recomputes only their changed parts.

``onnx`` is imported inside the functions that need it, never at module import.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from streamedge.caches.layer.geometry import (
    AxisField,
    AxisWindow,
    End,
    clip_interval,
    lcm_all,
)

if TYPE_CHECKING:
    import onnx

_log = logging.getLogger(__name__)

_UNARY = frozenset(
    {
        "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu",
        "Selu", "Celu", "Softplus", "Softsign", "ThresholdedRelu", "Mish", "Gelu",
        "Erf", "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Floor", "Ceil",
        "Round", "Sign", "Identity", "Cast", "Clip", "Dropout", "LRN", "Shrink",
    }
)  # fmt: skip
"""Pointwise on their first input; any other input must be a uniform constant."""

_NARY = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu"})
"""Pointwise (broadcasting) over all inputs: local tensors or uniform constants."""

_CHANNEL_SOFTMAX = frozenset({"Softmax", "LogSoftmax", "Hardmax"})
_POOLS = frozenset({"MaxPool", "AveragePool", "LpPool"})
_AUTO_PADS = frozenset({"NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"})


class LayoutError(ValueError):
    """The prefix cannot be laid out for one input size (too small, mismatched)."""


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """A convolution or pooling window as written in the model (pads unresolved)."""

    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    """``(h_begin, w_begin, h_end, w_end)``, ONNX order."""
    auto_pad: str = "NOTSET"
    ceil_mode: bool = False

    def resolve(self, n_h: int, n_w: int) -> tuple[AxisWindow, AxisWindow]:
        """Windows along H and W for an input of ``n_h`` x ``n_w``.

        ``SAME_*`` pads depend on the input size (onnxruntime's rule: total
        padding ``max(0, (ceil(n/s) - 1)*s + span - n)``, the odd pixel at the
        end for ``SAME_UPPER`` and at the beginning for ``SAME_LOWER``).
        """
        out: list[AxisWindow] = []
        for axis, n in enumerate((n_h, n_w)):
            k, s, d = self.kernel[axis], self.stride[axis], self.dilation[axis]
            if self.auto_pad == "VALID":
                pb = pe = 0
            elif self.auto_pad in {"SAME_UPPER", "SAME_LOWER"}:
                span = d * (k - 1) + 1
                total = max(0, (-(-n // s) - 1) * s + span - n)
                small = total // 2
                pb = small if self.auto_pad == "SAME_UPPER" else total - small
                pe = total - pb
            else:
                pb, pe = self.pads[axis], self.pads[axis + 2]
            out.append(AxisWindow(k, s, d, pb, pe, self.ceil_mode))
        return out[0], out[1]


@dataclass(frozen=True, slots=True)
class Step:
    """One local node: a window operator (``window`` set) or a pointwise one."""

    key: str
    """The node's first output name; identifies the node when it is rewritten."""
    op: str
    inputs: tuple[str, ...]
    """Local inputs only (constants are not listed)."""
    outputs: tuple[str, ...]
    window: WindowSpec | None = None


@dataclass(frozen=True, slots=True)
class PrefixAnalysis:
    """Where a model splits into a local prefix and a suffix.

    Attributes:
        image: name of the image input (NCHW).
        steps: the local nodes, in graph order.
        cut: prefix outputs the cache keeps (fed to the suffix or model outputs).
        outputs: the model's outputs, in order.
        suffix_inputs: what the suffix is fed (cut tensors, maybe the image).
        suffix_outputs: model outputs the suffix computes (empty: no suffix).
        stop: the first operator that ended the prefix (empty: whole model).
        reason: why the model cannot be split, or ``None``.
    """

    image: str
    steps: tuple[Step, ...] = ()
    cut: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    suffix_inputs: tuple[str, ...] = ()
    suffix_outputs: tuple[str, ...] = ()
    stop: str = ""
    reason: str | None = None

    @property
    def splittable(self) -> bool:
        """Whether the layer cache can work on this model."""
        return self.reason is None


@dataclass(frozen=True, slots=True, eq=False)
class Layout:
    """The prefix laid out for one input size.

    Attributes:
        height, width: the image size.
        sizes: spatial size of every local tensor.
        fields: receptive field of every local tensor along H and W.
        align: crop origins must be multiples of these (H, W): the least common
            multiple of every local tensor's jump, so that a crop samples the
            same grid as the whole image at every layer.
        same_pads: explicit pads for each ``SAME_*`` node at this size, keyed
            by :attr:`Step.key` (``h_begin, w_begin, h_end, w_end``).
    """

    image: str
    height: int
    width: int
    steps: tuple[Step, ...]
    windows: tuple[tuple[AxisWindow, AxisWindow] | None, ...]
    sizes: dict[str, tuple[int, int]]
    fields: dict[str, tuple[AxisField, AxisField]]
    align: tuple[int, int]
    same_pads: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)

    def valid(
        self, crop: tuple[int, int, int, int], names: tuple[str, ...]
    ) -> dict[str, tuple[int, int, int, int]]:
        """Exact region of each tensor in ``names`` when the prefix runs on ``crop``.

        Args:
            crop: ``(y0, y1, x0, x1)`` in image pixels; origins aligned.
            names: local tensors to report.

        Returns:
            ``{name: (y0, y1, x0, x1)}`` in that tensor's full-image positions:
            the positions whose crop-computed value equals the whole-image value.
        """
        y0, y1, x0, x1 = crop
        per_axis = []
        for axis, (a, b, n) in enumerate(((y0, y1, self.height), (x0, x1, self.width))):
            # None bounds: the crop touches the image border on that side, so the
            # padding it sees there is the model's own.
            iv: dict[str, tuple[End, End]] = {
                self.image: (None if a <= 0 else a, None if b >= n else b)
            }
            for step, win in zip(self.steps, self.windows, strict=True):
                if win is not None:
                    res = win[axis].valid(*iv[step.inputs[0]])
                else:
                    bounds = [iv[name] for name in step.inputs]
                    los = [lo for lo, _ in bounds if lo is not None]
                    his = [hi for _, hi in bounds if hi is not None]
                    res = (max(los) if los else None, min(his) if his else None)
                for out in step.outputs:
                    iv[out] = res
            per_axis.append(
                {name: clip_interval(*iv[name], self.sizes[name][axis]) for name in names}
            )
        return {name: (*per_axis[0][name], *per_axis[1][name]) for name in names}


def layout(analysis: PrefixAnalysis, height: int, width: int) -> Layout:
    """Lay the prefix out for an image of ``height`` x ``width``.

    Raises:
        LayoutError: the image is too small for some window, or two tensors
            combined pointwise have different sizes at this input size.
    """
    image = analysis.image
    sizes: dict[str, tuple[int, int]] = {image: (height, width)}
    fields: dict[str, tuple[AxisField, AxisField]] = {image: (AxisField(), AxisField())}
    windows: list[tuple[AxisWindow, AxisWindow] | None] = []
    same: dict[str, tuple[int, int, int, int]] = {}
    for step in analysis.steps:
        if step.window is not None:
            src = step.inputs[0]
            n_h, n_w = sizes[src]
            wh, ww = step.window.resolve(n_h, n_w)
            if step.window.auto_pad.startswith("SAME"):
                same[step.key] = (wh.pad_begin, ww.pad_begin, wh.pad_end, ww.pad_end)
            size = (wh.out_size(n_h), ww.out_size(n_w))
            if min(size) <= 0:
                msg = f"{height}x{width} is too small for {step.op} {step.key!r}"
                raise LayoutError(msg)
            fh, fw = fields[src]
            fld = (fh.through(wh), fw.through(ww))
            windows.append((wh, ww))
        else:
            in_sizes = {sizes[name] for name in step.inputs}
            if len(in_sizes) != 1:
                msg = f"{step.op} {step.key!r} combines sizes {sorted(in_sizes)}"
                raise LayoutError(msg)
            size = in_sizes.pop()
            fh, fw = fields[step.inputs[0]]
            try:
                for name in step.inputs[1:]:
                    fh, fw = fh.union(fields[name][0]), fw.union(fields[name][1])
            except ValueError as exc:
                raise LayoutError(f"{step.op} {step.key!r}: {exc}") from exc
            fld = (fh, fw)
            windows.append(None)
        for out in step.outputs:
            sizes[out] = size
            fields[out] = fld
    align = (
        lcm_all([f[0].jump for f in fields.values()]),
        lcm_all([f[1].jump for f in fields.values()]),
    )
    return Layout(
        image=image,
        height=height,
        width=width,
        steps=analysis.steps,
        windows=tuple(windows),
        sizes=sizes,
        fields=fields,
        align=align,
        same_pads=same,
    )


# --------------------------------------------------------------------------- analysis


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in {"", "ai.onnx"}:
            return int(imp.version)
    return 1


class _Constants:
    """Constant tensors of a graph: their shapes and, where cheap, their values."""

    def __init__(self, model: onnx.ModelProto, shapes: dict[str, tuple[int, ...] | None]):
        from onnx import numpy_helper

        self.shapes: dict[str, tuple[int, ...] | None] = {}
        self.values: dict[str, Any] = {}
        for init in model.graph.initializer:
            self.shapes[init.name] = tuple(int(d) for d in init.dims)
            self.values[init.name] = init
        self._to_array = numpy_helper.to_array
        self._inferred = shapes

    def add_constant_node(self, node: onnx.NodeProto) -> None:
        attrs = _attrs(node)
        name = node.output[0]
        if "value" in attrs:
            self.values[name] = attrs["value"]
            self.shapes[name] = tuple(int(d) for d in attrs["value"].dims)
        elif any(k in attrs for k in ("value_float", "value_int")):
            self.shapes[name] = ()
        else:
            self.shapes[name] = self._inferred.get(name)

    def add_derived(self, name: str) -> None:
        """A tensor computed from constants only (shape from shape inference)."""
        self.shapes[name] = self._inferred.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self.shapes

    def array(self, name: str) -> Any | None:
        value = self.values.get(name)
        return None if value is None else self._to_array(value)

    def uniform(self, name: str, rank: int = 4) -> bool:
        """Whether the constant broadcasts identically over height and width."""
        shape = self.shapes.get(name)
        if shape is None or len(shape) > rank:
            return False
        padded = (1,) * (rank - len(shape)) + shape
        return padded[-1] == 1 and padded[-2] == 1


def _inferred_shapes(
    model: onnx.ModelProto,
) -> tuple[onnx.ModelProto, dict[str, tuple[int, ...] | None]]:
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # noqa: BLE001 - inference is a convenience; go on without
        _log.debug("shape inference failed (%s); analysing without it", exc)
        inferred = model
    shapes: dict[str, tuple[int, ...] | None] = {}
    for vi in (
        *inferred.graph.value_info,
        *inferred.graph.input,
        *inferred.graph.output,
    ):
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            shapes[vi.name] = None
            continue
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        shapes[vi.name] = None if any(d < 0 for d in dims) else tuple(dims)
    return inferred, shapes


def _window(node: onnx.NodeProto, consts: _Constants) -> WindowSpec | str:
    """The window of a Conv/pool node, or the reason it is not local."""
    attrs = _attrs(node)
    kernel = attrs.get("kernel_shape")
    if kernel is None and node.op_type == "Conv":
        w_shape = consts.shapes.get(node.input[1]) if len(node.input) > 1 else None
        kernel = list(w_shape[2:]) if w_shape is not None else None
    if kernel is None or len(kernel) != 2:
        return "not a 2-D window"
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if auto_pad not in _AUTO_PADS:
        return f"auto_pad {auto_pad}"
    pads = tuple(attrs.get("pads", (0, 0, 0, 0)))
    if len(pads) != 4 or min(pads) < 0:
        return f"pads {pads}"
    strides = attrs.get("strides", (1, 1))
    dilations = attrs.get("dilations", (1, 1))
    if len(strides) != 2 or len(dilations) != 2:
        return "not a 2-D window"
    return WindowSpec(
        kernel=(int(kernel[0]), int(kernel[1])),
        stride=(int(strides[0]), int(strides[1])),
        dilation=(int(dilations[0]), int(dilations[1])),
        pads=(int(pads[0]), int(pads[1]), int(pads[2]), int(pads[3])),
        auto_pad=auto_pad,
        ceil_mode=bool(attrs.get("ceil_mode", 0)),
    )


def _pad_window(node: onnx.NodeProto, consts: _Constants, opset: int) -> WindowSpec | str:
    attrs = _attrs(node)
    mode = attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if mode != "constant":
        # reflect/edge padding copies image content, which a crop border does not have
        return f"Pad mode {mode}"
    if opset < 11:
        pads = attrs.get("pads")
    else:
        pads = consts.array(node.input[1]) if len(node.input) > 1 else None
        pads = None if pads is None else [int(p) for p in pads.reshape(-1)]
    if len(node.input) > 3 and node.input[3]:
        axes = consts.array(node.input[3])
        if axes is None:
            return "Pad axes not constant"
        full = [0] * 8
        ax = [int(a) % 4 for a in axes.reshape(-1)]
        if pads is None:
            return "Pad pads not constant"
        for i, a in enumerate(ax):
            full[a] = pads[i]
            full[a + 4] = pads[i + len(ax)]
        pads = full
    if pads is None or len(pads) != 8:
        return "Pad pads not constant"
    if any(pads[i] != 0 for i in (0, 1, 4, 5)) or min(pads) < 0:
        return f"Pad pads {pads}"
    return WindowSpec(kernel=(1, 1), pads=(int(pads[2]), int(pads[3]), int(pads[6]), int(pads[7])))


def _channel_axis(axis: int) -> bool:
    return axis in {1, -3}


def analyse(model: onnx.ModelProto) -> PrefixAnalysis:
    """Find the longest spatially local prefix of ``model``.

    Args:
        model: a model with one NCHW float image input.

    Returns:
        The analysis; :attr:`PrefixAnalysis.reason` says why the model cannot be
        split (then the cache runs it whole).
    """
    import onnx

    inferred, shapes = _inferred_shapes(model)
    graph = inferred.graph
    opset = _opset(model)
    consts = _Constants(inferred, shapes)
    outputs = tuple(o.name for o in graph.output)
    inputs = [i for i in graph.input if i.name not in consts]
    if len(inputs) != 1:
        names = [i.name for i in inputs]
        return PrefixAnalysis(image="", outputs=outputs, reason=f"needs one input, has {names}")
    image_vi = inputs[0]
    image = image_vi.name
    tt = image_vi.type.tensor_type
    if tt.elem_type != onnx.TensorProto.FLOAT or len(tt.shape.dim) != 4:
        return PrefixAnalysis(
            image=image,
            outputs=outputs,
            reason="the input is not a rank-4 float tensor",
        )

    local: set[str] = {image}
    steps: list[Step] = []
    stops: dict[str, str] = {}  # non-local node output -> why
    nonlocal_nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        ins = [n for n in node.input if n]
        outs = tuple(n for n in node.output if n)
        if node.op_type == "Constant":
            consts.add_constant_node(node)
            continue
        if ins and all(n in consts for n in ins) and node.domain in {"", "ai.onnx"}:
            for out in outs:
                consts.add_derived(out)
            continue
        step_or_reason = _classify(node, ins, outs, local, consts, opset)
        if isinstance(step_or_reason, Step):
            steps.append(step_or_reason)
            local.update(outs)
        else:
            nonlocal_nodes.append(node)
            for out in outs:
                stops[out] = step_or_reason

    # Only what the outputs need matters: walk back from the outputs.
    producers: dict[str, onnx.NodeProto] = {o: n for n in graph.node for o in n.output if o}
    needed_nodes: set[int] = set()
    stack = list(outputs)
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        node = producers.get(name)
        if node is not None:
            needed_nodes.add(id(node))
            stack.extend(n for n in node.input if n)
    suffix_nodes = [n for n in nonlocal_nodes if id(n) in needed_nodes]
    suffix_reads = {n for node in suffix_nodes for n in node.input if n in local}
    cut = tuple(
        name for step in steps for name in step.outputs if name in suffix_reads or name in outputs
    )
    suffix_outputs = tuple(o for o in outputs if o not in local)
    suffix_inputs = tuple([image] * (image in suffix_reads) + [n for n in cut if n in suffix_reads])
    stop = ""
    for node in suffix_nodes:
        if any(n in local for n in node.input):
            name = node.name or node.output[0]
            stop = f"{node.op_type} {name!r} ({stops[node.output[0]]})"
            break
    used_steps = tuple(s for s in steps if any(id(producers[o]) in needed_nodes for o in s.outputs))
    reason: str | None = None
    if image in outputs or any(o in consts for o in outputs):
        reason = "an output is the input or a constant"
    elif not any(s.window is not None and s.op != "Pad" for s in used_steps) or not cut:
        reason = f"no convolutional prefix (stops at {stop or 'the start'})"
    return PrefixAnalysis(
        image=image,
        steps=used_steps if reason is None else (),
        cut=cut if reason is None else (),
        outputs=outputs,
        suffix_inputs=suffix_inputs if reason is None else (),
        suffix_outputs=suffix_outputs,
        stop=stop,
        reason=reason,
    )


def _classify(
    node: onnx.NodeProto,
    ins: list[str],
    outs: tuple[str, ...],
    local: set[str],
    consts: _Constants,
    opset: int,
) -> Step | str:
    """A :class:`Step` if ``node`` keeps locality, else the reason it does not."""
    op = node.op_type
    key = outs[0] if outs else node.name
    if node.domain not in {"", "ai.onnx"}:
        return f"custom domain {node.domain}"
    local_ins = tuple(n for n in ins if n in local)
    others = [n for n in ins if n not in local]
    if not local_ins:
        return "reads no local tensor"
    if any(n not in consts for n in others):
        return "reads a non-local tensor"
    if op == "Conv" or op in _POOLS:
        if op in _POOLS and len(outs) > 1:
            return "returns pooling indices"
        if ins[0] not in local or len(local_ins) != 1:
            return "weights are not constant"
        win = _window(node, consts)
        return Step(key, op, local_ins, outs, win) if isinstance(win, WindowSpec) else win
    if op == "Pad":
        if ins[0] not in local or len(local_ins) != 1:
            return "pads a non-local tensor"
        win = _pad_window(node, consts, opset)
        return Step(key, op, local_ins, outs, win) if isinstance(win, WindowSpec) else win
    if op == "BatchNormalization":
        if int(_attrs(node).get("training_mode", 0)) or len(local_ins) != 1:
            return "training-mode batch norm"
        return Step(key, op, local_ins, outs[:1])
    if op in _UNARY:
        if ins[0] not in local or not all(consts.uniform(n) for n in others):
            return "parameters vary over space"
        return Step(key, op, local_ins, outs)
    if op in _NARY:
        if not all(consts.uniform(n) for n in others):
            return "a constant operand varies over space"
        return Step(key, op, local_ins, outs)
    if op in _CHANNEL_SOFTMAX:
        axis = int(_attrs(node).get("axis", 1 if opset < 13 else -1))
        # Before opset 13 the op flattens every axis from ``axis`` on: spatial mixing.
        if opset < 13 or not _channel_axis(axis):
            return f"{op} over a spatial axis"
        return Step(key, op, local_ins, outs)
    if op in {"Concat", "Split"}:
        axis = int(_attrs(node).get("axis", 0))
        if not _channel_axis(axis) or (others and op == "Concat"):
            return f"{op} along axis {axis}"
        return Step(key, op, local_ins, outs)
    return "mixes positions" if op in _GLOBAL else "not known to be local"


_GLOBAL = frozenset(
    {
        "Gemm", "MatMul", "Flatten", "Reshape", "Transpose", "GlobalAveragePool",
        "GlobalMaxPool", "GlobalLpPool", "Resize", "Upsample", "ReduceMean",
        "ReduceSum", "ReduceMax", "InstanceNormalization", "LayerNormalization",
        "ConvTranspose",
    }
)  # fmt: skip


# --------------------------------------------------------------------------- splitting


def split(
    model: onnx.ModelProto, analysis: PrefixAnalysis
) -> tuple[onnx.ModelProto, onnx.ModelProto | None]:
    """Cut ``model`` into a prefix (image → cut) and a suffix (cut → the rest).

    The prefix's spatial dimensions are made symbolic so that it runs on crops
    of any size. The suffix is ``None`` when the whole model is local.

    Raises:
        ValueError: the analysis says the model cannot be split.
    """
    import onnx
    import onnx.utils

    if not analysis.splittable:
        msg = f"model cannot be split: {analysis.reason}"
        raise ValueError(msg)
    inferred, _ = _inferred_shapes(model)
    known = {
        vi.name
        for vi in (
            *inferred.graph.value_info,
            *inferred.graph.input,
            *inferred.graph.output,
        )
    }
    for name in (*analysis.cut, *analysis.suffix_inputs):
        if name not in known:
            # Extractor needs a value info for every boundary tensor; the type is
            # float for everything the local ops produce from a float image.
            inferred.graph.value_info.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            )
            known.add(name)
    extractor = onnx.utils.Extractor(inferred)
    prefix = extractor.extract_model([analysis.image], list(analysis.cut))
    _spatially_dynamic(prefix)
    suffix = None
    if analysis.suffix_outputs:
        suffix = extractor.extract_model(
            list(analysis.suffix_inputs), list(analysis.suffix_outputs)
        )
    return prefix, suffix


def _spatially_dynamic(prefix: onnx.ModelProto) -> None:
    """Make H and W symbolic and drop shapes inferred for the whole image."""
    dims = prefix.graph.input[0].type.tensor_type.shape.dim
    for i, name in ((2, "height"), (3, "width")):
        dims[i].Clear()
        dims[i].dim_param = name
    for out in prefix.graph.output:
        out.type.tensor_type.ClearField("shape")
    del prefix.graph.value_info[:]


def with_explicit_pads(
    prefix: onnx.ModelProto, pads: dict[str, tuple[int, int, int, int]]
) -> onnx.ModelProto:
    """A copy of ``prefix`` whose ``SAME_*`` nodes use the given explicit pads.

    ``SAME`` padding depends on the input size, so a crop would be padded
    differently from the whole image; fixing the whole image's pads makes a
    crop that touches the border pad exactly like the whole image does.
    """
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(prefix)
    for node in out.graph.node:
        key = next((o for o in node.output if o), node.name)
        if key not in pads:
            continue
        keep = [a for a in node.attribute if a.name not in {"auto_pad", "pads"}]
        del node.attribute[:]
        node.attribute.extend(keep)
        node.attribute.append(onnx.helper.make_attribute("pads", list(pads[key])))
    return out
