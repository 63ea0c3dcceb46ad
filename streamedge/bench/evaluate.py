"""One evaluation run: references, the every-frame baseline, each configuration, scores.

:func:`evaluate` (or :func:`evaluate_async` inside a running loop) does, in
one process so that ratios of times are comparable:

1. the reference answers of every stream (from the store, or the full
   model on every frame, stored for next time);
2. the infer-every-frame baseline: the first configuration with its
   filters and cache removed (:func:`~streamedge.bench.replay.every_frame_config`),
   replayed through the real pipeline;
3. each configuration, replayed through the real pipeline;
4. scores: accuracy against the reference, frames per level, model runs,
   inference seconds and processor wall time next to the baseline's, and
   uniform sampling at the same agreement; the oracle and a uniform curve
   from the reference alone.
"""

from __future__ import annotations

import asyncio
import platform
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from streamedge.bench.answers import is_positive
from streamedge.bench.baselines import (
    BaselinePoint,
    Metric,
    oracle,
    pick_uniform,
    uniform_curve,
)
from streamedge.bench.metrics import Accuracy, pooled_accuracy
from streamedge.bench.progress import NoProgress, Progress, ProgressLine
from streamedge.bench.reference import Reference, ReferenceStore, reference_for
from streamedge.bench.replay import (
    MODEL_TIERS,
    ReplayResult,
    evaluated_app,
    every_frame_config,
    model_config_of,
    replay,
)
from streamedge.bench.workloads import StreamSpec
from streamedge.config import StreamedgeConfig
from streamedge.errors import ConfigError
from streamedge.inference.config import ModelConfig
from streamedge.models.factory import build_model, model_info
from streamedge.protocols import Model
from streamedge.records import JSON

LEVELS = ("filter", "cache", "local", "edge", "cloud", "dropped")
"""Where a frame can stop, in pipeline order."""
UNIFORM_PLOT_KS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100)
"""Intervals of the uniform curve kept in reports and plots."""

ProgressFactory = Callable[[str, int | None], Progress]


def progress_lines(label: str, total: int | None) -> Progress:
    """The default :data:`ProgressFactory`: a :class:`ProgressLine` on stderr."""
    return ProgressLine(label, total)


def no_progress(label: str, total: int | None) -> Progress:
    """A :data:`ProgressFactory` that shows nothing."""
    del label, total
    return NoProgress()


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigResult:
    """One replayed configuration, scored."""

    name: str
    replay: ReplayResult
    accuracy: Accuracy
    every_frame_infer_s: float
    """The infer-every-frame baseline's inference seconds, same run."""
    every_frame_wall_s: float
    """The baseline's processor wall time, same run."""
    uniform: BaselinePoint | None = None
    """Uniform sampling at the same agreement (None for the baseline itself)."""
    every_frame_cpu_s: float = 0.0
    """The baseline's process CPU time, same run."""

    @property
    def frames(self) -> int:
        """Frames replayed."""
        return self.replay.frames

    @property
    def inferences(self) -> int:
        """Frames on which the model ran."""
        return self.replay.inferences

    @property
    def inference_fraction(self) -> float:
        """Model runs per frame."""
        return self.inferences / self.frames if self.frames else 0.0

    @property
    def inference_saved(self) -> float:
        """Fraction of frames that did not need a model run."""
        return 1.0 - self.inference_fraction

    @property
    def infer_s(self) -> float:
        """Inference seconds spent."""
        return self.replay.infer_s

    @property
    def infer_s_ratio(self) -> float | None:
        """Inference seconds over the every-frame baseline's."""
        base = self.every_frame_infer_s
        return self.infer_s / base if base > 0 else None

    @property
    def throughput_ratio(self) -> float | None:
        """Frames per processor second over the baseline's (> 1: faster)."""
        wall = self.replay.wall_s
        return self.every_frame_wall_s / wall if wall > 0 else None

    @property
    def cpu_ratio(self) -> float | None:
        """Frames per CPU second over the baseline's (> 1: cheaper); steadier than
        :attr:`throughput_ratio` when other processes share the cores."""
        cpu = self.replay.cpu_s
        return self.every_frame_cpu_s / cpu if cpu > 0 else None

    def level_fractions(self) -> dict[str, float]:
        """Fraction of frames stopping at each level (filter, cache, local, ...)."""
        counts = self.replay.levels()
        n = self.frames or 1
        return {level: counts.get(level, 0) / n for level in LEVELS if counts.get(level, 0)}

    def reached(self) -> dict[str, float]:
        """Fraction of frames that reached the filter, cache and model stages."""
        counts = self.replay.levels()
        n = self.frames or 1
        filtered = counts.get("filter", 0)
        dropped = counts.get("dropped", 0)
        return {
            "filter": 1.0,
            "cache": (n - filtered - dropped) / n,
            "model": sum(counts.get(t, 0) for t in MODEL_TIERS) / n,
        }

    def to_json(self, *, frames: bool = False) -> JSON:
        """A JSON-serialisable summary (with every frame's record when ``frames``)."""
        doc: JSON = {
            "name": self.name,
            "frames": self.frames,
            "inferences": self.inferences,
            "inference_fraction": self.inference_fraction,
            "inference_saved": self.inference_saved,
            "levels": self.level_fractions(),
            "reached": self.reached(),
            "accuracy": self.accuracy.to_json(),
            "infer_s": self.infer_s,
            "infer_s_every_frame": self.every_frame_infer_s,
            "infer_s_ratio": self.infer_s_ratio,
            "wall_s": self.replay.wall_s,
            "wall_s_every_frame": self.every_frame_wall_s,
            "throughput_ratio": self.throughput_ratio,
            "cpu_s": self.replay.cpu_s,
            "cpu_s_every_frame": self.every_frame_cpu_s,
            "cpu_ratio": self.cpu_ratio,
            "stage_ms": self.replay.stage_means_ms(),
            "uniform_same_agreement": self.uniform.to_json() if self.uniform else None,
        }
        if frames:
            doc["records"] = [r.to_json() for r in self.replay.records]
        return doc


@dataclass(slots=True, kw_only=True)
class Evaluation:
    """Everything one evaluation run measured."""

    streams: list[StreamSpec]
    model: str
    app: str
    references: list[Reference]
    every_frame: ConfigResult
    configs: list[ConfigResult]
    oracle: BaselinePoint
    oracle_count: BaselinePoint
    uniform_curve: list[BaselinePoint]
    notes: list[str] = field(default_factory=list)

    def reference_summary(self) -> JSON:
        """Frames, faces and the full model's measured cost per frame."""
        infer = [s for ref in self.references for s in ref.infer_s]
        answers = [a for ref in self.references for a in ref.answers]
        positive = sum(1 for a in answers if is_positive(a))
        infer_sorted = sorted(infer)
        return {
            "model": self.model,
            "frames": len(answers),
            "positive_frames": positive,
            "model_ms_mean": 1e3 * sum(infer) / len(infer) if infer else None,
            "model_ms_p50": 1e3 * infer_sorted[len(infer) // 2] if infer else None,
            "answer_changes": self.oracle.inferences,
        }

    def to_json(self, *, frames: bool = False) -> JSON:
        """The whole evaluation as JSON (``frames``: include per-frame records)."""
        return {
            "schema": 1,
            "model": self.model,
            "app": self.app,
            "streams": [s.describe() for s in self.streams],
            "reference": self.reference_summary(),
            "every_frame": self.every_frame.to_json(frames=frames),
            "configs": [c.to_json(frames=frames) for c in self.configs],
            "baselines": {
                "oracle": self.oracle.to_json(),
                "oracle_count": self.oracle_count.to_json(),
                "uniform": [p.to_json() for p in self.uniform_curve],
            },
            "environment": environment(),
            "notes": self.notes,
        }


def environment() -> JSON:
    """Where the numbers were measured."""
    import os

    doc: JSON = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    try:
        import onnxruntime

        doc["onnxruntime"] = str(onnxruntime.__version__)
    except ImportError:  # pragma: no cover - a core dependency
        pass
    return doc


def _reference_model(cfg: StreamedgeConfig, app: str | None, key: str) -> ModelConfig:
    return model_config_of(cfg, evaluated_app(cfg, key, app))


def references_for(
    cfg: StreamedgeConfig,
    streams: Sequence[StreamSpec],
    store: ReferenceStore,
    *,
    app: str | None = None,
    reference_model: ModelConfig | None = None,
    progress: ProgressFactory = no_progress,
    recompute: bool = False,
) -> list[Reference]:
    """Reference answers for each stream, with the model of ``cfg``'s evaluated app.

    Args:
        cfg: the configuration whose evaluated app names the model.
        streams: the streams.
        store: where references are kept.
        app: the evaluated app (default: the first of the first stream's rule).
        reference_model: use this model configuration instead (e.g. the plain
            model when the configured one caches inside itself).
        progress: makes a progress display per stream computed.
        recompute: ignore stored references.
    """
    mcfg = reference_model or _reference_model(cfg, app, streams[0].key)
    data_dir = cfg.gateway.data_dir
    loaded: list[Model] = []

    def load() -> Model:
        if not loaded:
            loaded.append(build_model(mcfg, data_dir=data_dir))
        return loaded[0]

    return [
        reference_for(
            spec,
            load,
            store,
            model_name=str(model_info(mcfg).ref),
            model_config=mcfg.model_dump(mode="json"),
            progress=lambda s: progress(f"reference {s.key}", s.frame_count()),
            recompute=recompute,
        )
        for spec in streams
    ]


def score(
    name: str,
    result: ReplayResult,
    references: Sequence[Reference],
    *,
    every_frame: ReplayResult | None = None,
    uniform: Sequence[BaselinePoint] | None = None,
    uniform_metric: Metric = "agreement",
) -> ConfigResult:
    """Score a replay against the references (and the every-frame baseline, same run).

    Args:
        name: the configuration's label.
        result: its replay.
        references: the reference of each replayed stream, in order.
        every_frame: the baseline's replay (None: ``result`` is the baseline).
        uniform: a uniform curve over k = 1, 2, ...; the point reaching the
            same ``uniform_metric`` is attached.
        uniform_metric: which figure the uniform baseline must match.

    Raises:
        ValueError: a stream's frame count differs from its reference's.
    """
    pairs = []
    for position, ref in enumerate(references):
        answers = result.answers(position)
        if len(answers) != ref.frames:
            msg = (
                f"{name}: stream {position} replayed {len(answers)} frames, "
                f"its reference has {ref.frames}"
            )
            raise ValueError(msg)
        pairs.append((ref.answers, answers))
    acc = pooled_accuracy(pairs)
    base = every_frame or result
    matched = None
    if uniform:
        target = {
            "agreement": acc.agreement,
            "count_agreement": acc.count_agreement,
            "presence_agreement": acc.presence_agreement,
            "windowed": acc.windowed.accuracy if acc.windowed.accuracy is not None else 1.0,
        }[uniform_metric]
        matched = pick_uniform(uniform, target, metric=uniform_metric)
    return ConfigResult(
        name=name,
        replay=result,
        accuracy=acc,
        every_frame_infer_s=base.infer_s,
        every_frame_wall_s=base.wall_s,
        every_frame_cpu_s=base.cpu_s,
        uniform=matched,
    )


async def evaluate_async(
    configs: Sequence[tuple[str, StreamedgeConfig]],
    streams: Sequence[StreamSpec],
    *,
    store: ReferenceStore | None = None,
    app: str | None = None,
    baseline: StreamedgeConfig | None = None,
    reference_model: ModelConfig | None = None,
    progress: ProgressFactory = no_progress,
    recompute_reference: bool = False,
    uniform_metric: Metric = "agreement",
    uniform_max_k: int | None = None,
) -> Evaluation:
    """Evaluate configurations on streams against the full model (see the module docstring).

    Args:
        configs: ``(label, configuration)`` pairs, replayed in order.
        streams: the camera streams (one video, or derived cameras interleaved).
        store: reference answer store (default: :func:`default_reference_dir`).
        app: the evaluated application's name (default: the first app of the
            rule matching the first stream, in each configuration).
        baseline: the infer-every-frame configuration (default: the first
            configuration without filters and caches).
        reference_model: the model computing the references (default: the
            evaluated app's model in the first configuration).
        progress: makes progress displays (:func:`progress_lines` for stderr).
        recompute_reference: recompute references even when stored.
        uniform_metric: what uniform sampling must match: ``agreement``
            (default), ``count_agreement``, ``presence_agreement`` or ``windowed``.
        uniform_max_k: longest sampling interval tried (default: the longest stream).

    Raises:
        ConfigError: no configuration, a stream no rule matches, or
            configurations evaluating different models.
        InferenceError: the reference model failed.
    """
    if not configs:
        raise ConfigError("evaluate needs at least one configuration")
    if not streams:
        raise ConfigError("evaluate needs at least one stream")
    first = configs[0][1]
    mcfg = reference_model or _reference_model(first, app, streams[0].key)
    model = str(model_info(mcfg).ref)
    for label, cfg in configs:
        other = str(model_info(_reference_model(cfg, app, streams[0].key)).ref)
        if reference_model is None and other != model:
            msg = f"configuration {label!r} evaluates {other}, the first evaluates {model}"
            raise ConfigError(msg)
    store = store or ReferenceStore()
    references = await asyncio.to_thread(
        references_for,
        first,
        streams,
        store,
        app=app,
        reference_model=mcfg,
        progress=progress,
        recompute=recompute_reference,
    )
    refs = [r.answers for r in references]
    longest = max(len(r) for r in refs)
    ks = range(1, min(longest, uniform_max_k or longest) + 1)
    full_curve = await asyncio.to_thread(uniform_curve, refs, ks)

    async def run(label: str, cfg: StreamedgeConfig) -> ReplayResult:
        total = sum(s.frame_count() or 0 for s in streams) or None
        shown = progress(label, total)
        try:
            return await replay(cfg, streams, name=label, app=app, progress=shown)
        finally:
            close = getattr(shown, "close", None)
            if callable(close):
                close()

    base_cfg = baseline or every_frame_config(first, streams, app)
    every = await run("every-frame", base_cfg)
    every_result = score("every-frame", every, references)
    results = [
        score(
            label,
            await run(label, cfg),
            references,
            every_frame=every,
            uniform=full_curve,
            uniform_metric=uniform_metric,
        )
        for label, cfg in configs
    ]
    chosen_app = evaluated_app(first, streams[0].key, app).name
    notes = []
    if any(not s.derivation.identity for s in streams):
        notes.append(
            "derived cameras: crops, shifts, brightness and frame-rate changes of one "
            "recorded video, not independent recordings"
        )
    return Evaluation(
        streams=list(streams),
        model=model,
        app=chosen_app,
        references=references,
        every_frame=every_result,
        configs=results,
        oracle=oracle(refs, change="boxes"),
        oracle_count=oracle(refs, change="count"),
        uniform_curve=[p for p in full_curve if p.k in UNIFORM_PLOT_KS],
        notes=notes,
    )


def evaluate(
    configs: Sequence[tuple[str, StreamedgeConfig]],
    streams: Sequence[StreamSpec],
    *,
    store: ReferenceStore | None = None,
    app: str | None = None,
    baseline: StreamedgeConfig | None = None,
    reference_model: ModelConfig | None = None,
    progress: ProgressFactory = no_progress,
    recompute_reference: bool = False,
    uniform_metric: Metric = "agreement",
    uniform_max_k: int | None = None,
) -> Evaluation:
    """:func:`evaluate_async` in a new event loop (for scripts and the CLI)."""
    return asyncio.run(
        evaluate_async(
            configs,
            streams,
            store=store,
            app=app,
            baseline=baseline,
            reference_model=reference_model,
            progress=progress,
            recompute_reference=recompute_reference,
            uniform_metric=uniform_metric,
            uniform_max_k=uniform_max_k,
        )
    )
