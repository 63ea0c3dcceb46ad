"""The evaluation harness: savings against accuracy, on real video and the real model.

Every claim about frames filtered or answers reused is measured here, against
the full model's own answers to every frame. ``streamedge bench eval`` is the
command line; everything is importable. Signatures below are stable: later
versions add keyword arguments with defaults, never remove or reorder.

Streams (:mod:`streamedge.bench.workloads`)::

    StreamSpec(video: Path, device="cam1", stream="camera",
               derivation=Derivation(), max_frames=None)
        .frames() -> Iterator[StreamFrame(index, source_index, ts, image)]
        .key -> "device/stream";  .frame_count() -> int | None
    Derivation(start=0, step=1, crop=(x, y, w, h) | None, shift=(dx, dy),
               gain=1.0, offset=0.0).apply(image) -> image
    derived_cameras(video, preset="jitter" | "overlap" | "mixed", *, stream="camera",
                    prefix="cam", max_frames=None) -> list[StreamSpec]
    interleave(streams) -> Iterator[(stream position, StreamFrame)]   # time order

Reference answers (:mod:`streamedge.bench.reference`), cached on disk by
model ``name@version`` + model config digest + video SHA-256 + derivation::

    ReferenceStore(directory=None)          # default ~/.cache/streamedge/reference
        .load(key) -> Reference | None;  .save(ref) -> Path;  .path_for(key)
    reference_for(spec, load_model: () -> Model, store, *, model_name, model_config=None,
                  progress=None, recompute=False) -> Reference
    Reference(key, answers: list[JSON], infer_s: list[float], ts: list[float])

Replay through the gateway's own pipeline (:mod:`streamedge.bench.replay`)::

    await replay(cfg: StreamedgeConfig, streams, *, name="config", app=None,
                 progress=None) -> ReplayResult
    ReplayResult.records: list[FrameRecord(stream, index, ts, outcome, level, tier,
                                           answer, reason, wall_s, stages_ms, distance)]
        .answers(stream=0) -> list[JSON | None];  .levels() -> Counter
        .inferences;  .infer_s;  .wall_s;  .stage_means_ms()
    every_frame_config(cfg, streams, app=None) -> StreamedgeConfig   # no filter, no cache

Metrics (:mod:`streamedge.bench.answers`, :mod:`streamedge.bench.metrics`)::

    iou(a, b);  match_boxes(ref, other, *, iou_threshold=0.5) -> [(i, j)]
    answers_agree(ref, other, *, iou_threshold=0.5);  counts_agree(ref, other)
    is_positive(answer)
    accuracy(reference, answers, *, iou_threshold=0.5, window_size=30,
             window_min_positive=28, fill_missing=True) -> Accuracy
    pooled_accuracy([(reference, answers), ...], ...) -> Accuracy
    Accuracy(frames, agreement, count_agreement, presence_agreement,
             windowed=WindowedAccuracy(windows, positive_windows, accuracy,
                                       false_negative_rate, false_positive_rate))
    windowed_accuracy(ref_positive, got_positive, *, size=30, min_positive=28)

Baselines from the reference alone (:mod:`streamedge.bench.baselines`)::

    uniform(refs: list of per-stream answers, k) -> BaselinePoint
    uniform_curve(refs, ks=None) -> list[BaselinePoint]
    uniform_for_target(refs, target, *, metric="agreement", max_k=None) -> BaselinePoint
    oracle(refs, *, change="boxes" | "count") -> BaselinePoint
    BaselinePoint(name, k, inferences, frames, accuracy).inference_fraction

The whole run (:mod:`streamedge.bench.evaluate`)::

    evaluate(configs: [(label, StreamedgeConfig)], streams, *, store=None, app=None,
             baseline=None, reference_model=None, progress=no_progress,
             recompute_reference=False, uniform_metric="agreement",
             uniform_max_k=None) -> Evaluation          # evaluate_async inside a loop
    Evaluation(every_frame, configs: list[ConfigResult], oracle, oracle_count,
               uniform_curve, references, ...).to_json(frames=False)
    ConfigResult: accuracy, inference_fraction, inference_saved, infer_s_ratio,
                  throughput_ratio, level_fractions(), reached(), uniform, replay

Reports (:mod:`streamedge.bench.report`): ``format_table(evaluation)``,
``write_json(evaluation, path)``, ``plot(evaluation, path)`` (needs the
``plot`` extra: matplotlib).
"""
