"""Reference answers: the full model on every frame, computed once and kept on disk.

The reference for a stream is the answer the full model gives to each of its
frames, run on the frame alone (no filter, no cache), in order. It is what
every configuration is scored against. Computing it takes one model run per
frame (about 100 ms per vtest.avi frame for MTCNN on this machine), so it is
cached in a directory as one JSON file per key:

* the model's ``name@version`` and a digest of its whole configuration
  (thresholds, pyramid factor, weight files: anything that changes answers);
* the SHA-256 of the video file's bytes;
* the stream's derivation (crop, shift, brightness, frame step, start).

The frame limit is not part of the key: a stored reference that covers the
whole video, or at least as many frames as asked for, serves any shorter
request (its first frames), so a quick run on 50 frames reuses the answers
of a full run.

Writes are atomic (a temporary file in the same directory, fsynced, then
renamed), so a crash leaves the old file or none. A file that cannot be
read, is not valid JSON, or holds another key is logged as a warning and
recomputed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamedge.bench.progress import NoProgress, Progress
from streamedge.bench.workloads import StreamSpec, file_digest, json_digest
from streamedge.protocols import Model
from streamedge.records import JSON, Frame, StreamKey

logger = logging.getLogger(__name__)

FORMAT = 2
"""Version of the file layout; part of every key."""


def default_reference_dir() -> Path:
    """``$XDG_CACHE_HOME/streamedge/reference`` (``~/.cache/streamedge/reference``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "streamedge" / "reference"


def reference_key(spec: StreamSpec, *, model: str, model_config: JSON | None = None) -> JSON:
    """The cache key of a stream's reference answers.

    Args:
        spec: the stream (its video is hashed: a few ms per MB).
        model: ``name@version`` of the reference model.
        model_config: the model's whole configuration (``model_dump(mode="json")``);
            any change in it is a different key.
    """
    described = spec.describe()
    return {
        "format": FORMAT,
        "model": model,
        "model_config": json_digest(model_config or {}),
        "video": file_digest(spec.video),
        "derivation": described["derivation"],
    }


@dataclass(frozen=True, slots=True, kw_only=True)
class Reference:
    """The full model's answers to every frame of one stream."""

    key: JSON
    answers: list[JSON]
    """One answer per frame, in stream order."""
    infer_s: list[float]
    """Seconds each model run took when the reference was computed."""
    ts: list[float]
    """Stream time of each frame, seconds."""
    complete: bool = True
    """Whether the answers run to the end of the video (not cut at a frame limit)."""

    def covers(self, max_frames: int | None) -> bool:
        """Whether these answers include the first ``max_frames`` frames (None: all)."""
        return self.complete or (max_frames is not None and self.frames >= max_frames)

    def head(self, max_frames: int | None) -> Reference:
        """The reference of the first ``max_frames`` frames (None: all of these)."""
        if max_frames is None or max_frames >= self.frames:
            return self
        return Reference(
            key=self.key,
            answers=self.answers[:max_frames],
            infer_s=self.infer_s[:max_frames],
            ts=self.ts[:max_frames],
            complete=False,
        )

    @property
    def frames(self) -> int:
        """Frames in the stream."""
        return len(self.answers)

    @property
    def model(self) -> str:
        """``name@version`` of the model that answered."""
        return str(self.key["model"])

    def to_json(self) -> JSON:
        """The document stored on disk."""
        return {
            "key": self.key,
            "complete": self.complete,
            "answers": self.answers,
            "infer_s": self.infer_s,
            "ts": self.ts,
        }

    @classmethod
    def from_json(cls, doc: Any) -> Reference:
        """Parse a stored document.

        Raises:
            ValueError: the document is not a reference.
        """
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        key, answers, infer_s, ts = (doc.get(k) for k in ("key", "answers", "infer_s", "ts"))
        if not isinstance(key, dict) or not isinstance(answers, list):
            raise ValueError("missing 'key' or 'answers'")
        if not isinstance(infer_s, list) or not isinstance(ts, list):
            raise ValueError("missing 'infer_s' or 'ts'")
        if not len(answers) == len(infer_s) == len(ts):
            raise ValueError("answers, infer_s and ts differ in length")
        if not all(isinstance(a, dict) for a in answers):
            raise ValueError("an answer is not a JSON object")
        complete = doc.get("complete")
        if not isinstance(complete, bool):
            raise ValueError("missing 'complete'")
        return cls(
            key=key,
            answers=answers,
            infer_s=[float(x) for x in infer_s],
            ts=[float(x) for x in ts],
            complete=complete,
        )


class ReferenceStore:
    """A directory of reference answer files, one per key."""

    def __init__(self, directory: Path | str | None = None) -> None:
        """Use ``directory`` (created on first save; default :func:`default_reference_dir`)."""
        self.directory = Path(directory) if directory is not None else default_reference_dir()
        self.hits = 0
        self.misses = 0
        self.corrupt = 0

    def path_for(self, key: JSON) -> Path:
        """The file holding the reference for ``key``."""
        model = re.sub(r"[^A-Za-z0-9_.@-]+", "_", str(key.get("model", "model")))
        video = str(key.get("video", ""))[:12]
        return self.directory / f"{model}-{video}-{json_digest(key)[:16]}.json"

    def load(self, key: JSON) -> Reference | None:
        """The stored reference for ``key``; None when absent or unusable (logged)."""
        path = self.path_for(key)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            self.misses += 1
            return None
        except OSError as exc:
            self.corrupt += 1
            logger.warning("cannot read reference answers %s (%s); recomputing", path, exc)
            return None
        try:
            ref = Reference.from_json(json.loads(text))
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            self.corrupt += 1
            logger.warning("reference answers %s are corrupt (%s); recomputing", path, exc)
            return None
        if ref.key != key:
            self.corrupt += 1
            logger.warning("reference answers %s hold another key; recomputing", path)
            return None
        self.hits += 1
        return ref

    def save(self, ref: Reference) -> Path:
        """Store a reference atomically; return its path."""
        path = self.path_for(ref.key)
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(ref.to_json(), fh, separators=(",", ":"))
                fh.flush()
                os.fsync(fh.fileno())
            Path(tmp).replace(path)
        except BaseException:
            with contextlib.suppress(OSError):
                Path(tmp).unlink()
            raise
        return path


def compute_reference(
    spec: StreamSpec, model: Model, *, key: JSON, progress: Progress | None = None
) -> Reference:
    """Run ``model`` on every frame of ``spec`` (blocking) and collect its answers.

    Raises:
        InferenceError: the model failed on a frame.
    """
    progress = progress or NoProgress()
    stream = StreamKey(spec.device, spec.stream)
    answers: list[JSON] = []
    infer_s: list[float] = []
    ts: list[float] = []
    for frame in spec.frames():
        item = Frame(stream=stream, ts=frame.ts, image=frame.image)
        start = time.perf_counter()
        prediction = model.predict(item)
        infer_s.append(time.perf_counter() - start)
        # A JSON round trip stores exactly what a published answer would carry.
        answers.append(json.loads(json.dumps(prediction.answer)))
        ts.append(frame.ts)
        progress.advance()
    complete = spec.max_frames is None or len(answers) < spec.max_frames
    return Reference(key=key, answers=answers, infer_s=infer_s, ts=ts, complete=complete)


def reference_for(
    spec: StreamSpec,
    load_model: Callable[[], Model],
    store: ReferenceStore,
    *,
    model_name: str,
    model_config: JSON | None = None,
    progress: Callable[[StreamSpec], Progress] | None = None,
    recompute: bool = False,
) -> Reference:
    """The reference answers for a stream: from the store, or computed and stored.

    Args:
        spec: the stream.
        load_model: returns the reference model; called only when the
            answers must be computed (``lambda: model`` for a loaded one).
        store: where references are kept.
        model_name: ``name@version`` of the model (part of the key).
        model_config: the model's whole configuration (part of the key).
        progress: makes the progress display for computing ``spec``'s
            answers; called only then.
        recompute: ignore a stored reference.

    Raises:
        InferenceError: the model failed on a frame.
    """
    key = reference_key(spec, model=model_name, model_config=model_config)
    if not recompute:
        stored = store.load(key)
        if stored is not None and stored.covers(spec.max_frames):
            logger.info("reference answers for %s from %s", spec.key, store.path_for(key))
            return stored.head(spec.max_frames)
    model = load_model()
    shown = progress(spec) if progress is not None else None
    try:
        ref = compute_reference(spec, model, key=key, progress=shown)
    finally:
        close = getattr(shown, "close", None)
        if callable(close):
            close()
    path = store.save(ref)
    logger.info("reference answers for %s computed (%d frames) into %s", spec.key, ref.frames, path)
    return ref
