#!/usr/bin/env python3
"""Export the MTCNN weights of facenet-pytorch to ONNX and check them.

The three MTCNN stages (PNet, RNet, ONet) were trained by Zhang et al. (2016);
the PyPI package ``facenet-pytorch`` (MIT) ships their weights as PyTorch state
dicts in ``facenet_pytorch/data/{pnet,rnet,onet}.pt``. This script rebuilds the
three networks, loads those state dicts, exports each one to ONNX and checks
onnxruntime's outputs against torch's on real image data. The ONNX files land
in ``streamedge/models/data/mtcnn/``, next to ``PROVENANCE.md``.

torch is no dependency of streamedge: run this in a throwaway venv::

    python3 -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch==2.13.0           # the CPU wheel
    /tmp/torchvenv/bin/pip install --no-deps facenet-pytorch
    /tmp/torchvenv/bin/pip install numpy onnx onnxruntime opencv-python-headless
    /tmp/torchvenv/bin/python scripts/export_mtcnn.py

facenet-pytorch is installed without its dependencies (torchvision, requests,
Pillow), so it cannot be imported; the script only reads its data files.

Graph contract (what ``streamedge.models.mtcnn`` relies on):

* input ``input``: float32 ``(N, 3, H, W)``, RGB, ``(pixel - 127.5) / 128``;
* PNet (any ``H, W >= 12``): ``reg (N, 4, h, w)``, ``prob (N, 2, h, w)``,
  ``features (N, 32, h, w)`` with ``h = ceil((H - 2) / 2) - 4`` (stride 2, 12 px
  receptive field); ``prob[:, 1]`` is the face probability;
* RNet (``24 x 24``): ``reg (N, 4)``, ``prob (N, 2)``, ``features (N, 128)``;
* ONet (``48 x 48``): ``reg (N, 4)``, ``landmarks (N, 10)`` (five x then five y,
  relative to the box), ``prob (N, 2)``, ``features (N, 256)``.

``features`` is the last hidden layer (after its PReLU), exported so that a
layer-level cache or a feature embedder can use it without a second model.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.metadata
import importlib.util
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "streamedge" / "models" / "data" / "mtcnn"
OPSET = 17
TOLERANCE = 1e-4
"""Largest absolute difference accepted between torch and onnxruntime outputs."""


class PNet(nn.Module):
    """Proposal network: fully convolutional, 12 x 12 window, stride 2."""

    def __init__(self) -> None:
        super().__init__()
        # Attribute names match the keys of facenet-pytorch's state dicts.
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu2(self.conv2(x))
        feats = self.prelu3(self.conv3(x))
        prob = torch.softmax(self.conv4_1(feats), dim=1)
        reg = self.conv4_2(feats)
        return reg, prob, feats


def _flatten_caffe_order(x: torch.Tensor) -> torch.Tensor:
    # The weights descend from Caffe models trained on transposed images, so
    # the dense layers expect the map flattened in (W, H, C) order.
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class RNet(nn.Module):
    """Refinement network on 24 x 24 crops."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        feats = self.prelu4(self.dense4(_flatten_caffe_order(x)))
        prob = torch.softmax(self.dense5_1(feats), dim=1)
        reg = self.dense5_2(feats)
        return reg, prob, feats


class ONet(nn.Module):
    """Output network on 48 x 48 crops: score, box offsets, five landmarks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        feats = self.prelu5(self.dense5(_flatten_caffe_order(x)))
        prob = torch.softmax(self.dense6_1(feats), dim=1)
        reg = self.dense6_2(feats)
        landmarks = self.dense6_3(feats)
        return reg, landmarks, prob, feats


STAGES: dict[str, tuple[type[nn.Module], int | None, list[str]]] = {
    # name: (network, fixed input side or None for any, output names)
    "pnet": (PNet, None, ["reg", "prob", "features"]),
    "rnet": (RNet, 24, ["reg", "prob", "features"]),
    "onet": (ONet, 48, ["reg", "landmarks", "prob", "features"]),
}


def weights_dir() -> Path:
    """Locate ``facenet_pytorch/data`` without importing the package."""
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("facenet-pytorch is not installed: pip install --no-deps facenet-pytorch")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def real_images() -> list[np.ndarray]:
    """A few real RGB uint8 images to compare torch and onnxruntime on.

    Frames of the videos fetched by ``scripts/fetch_data.sh`` or the committed
    excerpts; random noise is the fallback only when neither is there.
    """
    candidates = [
        REPO / "data" / "videos" / "vtest.avi",
        REPO / "data" / "videos" / "Megamind.avi",
        *sorted((REPO / "samples" / "video").glob("*.avi")),
    ]
    images: list[np.ndarray] = []
    try:
        import cv2  # optional in the export venv
    except ImportError:
        cv2 = None
    if cv2 is not None:
        for path in candidates:
            if not path.is_file():
                continue
            cap = cv2.VideoCapture(str(path))
            for _ in range(3):
                ok, frame = cap.read()
                if not ok:
                    break
                images.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
                for _ in range(20):  # skip ahead for variety
                    cap.grab()
            cap.release()
    if not images:
        print("warning: no video found; checking on random images only")
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)]
    return images


def normalise(rgb: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 RGB -> float32 1x3xHxW scaled to about [-1, 1]."""
    x = (rgb.astype(np.float32) - 127.5) / 128.0
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def inputs_for(side: int | None, images: list[np.ndarray]) -> list[np.ndarray]:
    """Network inputs cut from real images: whole frames or batches of crops."""
    out: list[np.ndarray] = []
    if side is None:
        for img in images:
            out.append(normalise(img))
            # Half-size too: PNet runs on every pyramid scale.
            half = img[::2, ::2]
            out.append(normalise(np.ascontiguousarray(half)))
        return out
    for img in images:
        h, w = img.shape[:2]
        crops = []
        for k in range(8):
            size = min(h, w) // (2 + k % 4)
            y = (k * 37) % (h - size)
            x = (k * 91) % (w - size)
            crop = img[y : y + size, x : x + size]
            # Nearest-neighbour resize keeps the script free of cv2.
            idx = (np.arange(side) * size / side).astype(int)
            crops.append(normalise(np.ascontiguousarray(crop[idx][:, idx]))[0])
        out.append(np.stack(crops).astype(np.float32))
    return out


def export(name: str, out_dir: Path, src: Path) -> Path:
    """Export one stage; return the ONNX path."""
    cls, side, outputs = STAGES[name]
    net = cls()
    state = torch.load(src / f"{name}.pt", map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    net.eval()
    example = torch.zeros(1, 3, side or 64, side or 64)
    axes: dict[int, str] = {0: "batch"}
    if side is None:
        axes |= {2: "height", 3: "width"}
    dynamic_axes = {"input": axes} | {o: {0: "batch"} for o in outputs}
    if side is None:
        dynamic_axes |= {o: {0: "batch", 2: "map_h", 3: "map_w"} for o in outputs}
    path = out_dir / f"{name}.onnx"
    with torch.no_grad():
        torch.onnx.export(
            net,
            (example,),
            str(path),
            input_names=["input"],
            output_names=outputs,
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    model.doc_string = (
        f"MTCNN {name.upper()} (Zhang et al. 2016), weights from facenet-pytorch "
        f"{importlib.metadata.version('facenet-pytorch')} (MIT). Input: RGB, "
        "(pixel - 127.5) / 128, NCHW."
    )
    onnx.save(model, str(path))
    return path


def verify(name: str, path: Path, src: Path, images: list[np.ndarray]) -> float:
    """Largest absolute difference between torch and onnxruntime outputs."""
    cls, side, outputs = STAGES[name]
    net = cls()
    net.load_state_dict(torch.load(src / f"{name}.pt", map_location="cpu", weights_only=True))
    net.eval()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for x in inputs_for(side, images):
        with torch.no_grad():
            ref = [t.numpy() for t in net(torch.from_numpy(x))]
        got = sess.run(outputs, {"input": x})
        for o, r, g in zip(outputs, ref, got, strict=True):
            if r.shape != g.shape:
                sys.exit(f"{name}.{o}: shape {g.shape} != torch {r.shape}")
            worst = max(worst, float(np.max(np.abs(r - g))))
        shape = "x".join(map(str, x.shape))
        print(f"  {name} input {shape}: max |onnx - torch| so far {worst:.2e}")
    return worst


def main() -> None:
    """Export, verify and write PROVENANCE.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    args = parser.parse_args()
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    src = weights_dir()
    images = real_images()
    print(f"weights from {src}; checking on {len(images)} real frames")
    torch.manual_seed(0)
    rows = []
    for name in STAGES:
        path = export(name, out_dir, src)
        worst = verify(name, path, src, images)
        status = "ok" if worst <= TOLERANCE else "FAILED"
        size = path.stat().st_size
        print(f"{name}: {path.name} {size} bytes, max abs diff {worst:.2e} {status}")
        if worst > TOLERANCE:
            sys.exit(f"{name}: onnxruntime differs from torch by {worst:.2e}")
        rows.append((name, sha256(src / f"{name}.pt"), sha256(path), worst))
    write_provenance(out_dir, rows)
    print(f"wrote {out_dir / 'PROVENANCE.md'}")


def write_provenance(out_dir: Path, rows: list[tuple[str, str, str, float]]) -> None:
    """Record where the ONNX files came from and how they were made."""
    versions = {
        p: importlib.metadata.version(p)
        for p in ("facenet-pytorch", "torch", "onnx", "onnxruntime")
    }
    today = dt.datetime.now(dt.UTC).date().isoformat()
    lines = [
        "# MTCNN ONNX files: provenance",
        "",
        "MTCNN (Zhang, Zhang, Li, Qiao: *Joint Face Detection and Alignment using",
        "Multi-task Cascaded Convolutional Networks*, IEEE SPL 2016). The weights are",
        f"the PyTorch state dicts shipped in the PyPI package facenet-pytorch "
        f"{versions['facenet-pytorch']}",
        "(`facenet_pytorch/data/{pnet,rnet,onet}.pt`, MIT licence, see `LICENSE`),",
        "converted to ONNX by `scripts/export_mtcnn.py` in this repository.",
        "",
        f"- Exported on {today} with torch {versions['torch']} (TorchScript exporter,",
        f"  opset {OPSET}), onnx {versions['onnx']}; checked with onnxruntime "
        f"{versions['onnxruntime']}.",
        "- Command: `/tmp/torchvenv/bin/python scripts/export_mtcnn.py` (set-up in the",
        "  script's docstring).",
        "- Check: each network's outputs from onnxruntime are compared with torch's on",
        "  real video frames (whole frames and half-size frames for PNet, batches of",
        f"  crops for RNet/ONet); the export fails above {TOLERANCE:.0e} absolute.",
        "- Input: `input`, float32 NCHW, RGB, `(pixel - 127.5) / 128`.",
        "",
        "| network | source `.pt` SHA-256 | `.onnx` SHA-256 | max abs diff |",
        "|---|---|---|---|",
    ]
    lines += [f"| {n} | `{s}` | `{o}` | {d:.1e} |" for n, s, o, d in rows]
    (out_dir / "PROVENANCE.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
