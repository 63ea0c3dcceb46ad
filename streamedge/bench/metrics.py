"""Accuracy of a sequence of answers against the reference answers.

* **Per-frame agreement**: the fraction of frames whose answer agrees with the
  full model's answer to the same frame (:func:`~streamedge.bench.answers.answers_agree`:
  boxes matched both ways at IoU ≥ 0.5), and the fraction with the same count.
* **Windowed accuracy** (NoScope, Kang et al. VLDB 2017, ``noscope_accuracy.py``):
  the binary "is anything there?" label of each frame is grouped into windows
  of 30 consecutive frames; a window is positive when at least 28 of its 30
  frames are positive. Windowed accuracy is the fraction of windows whose
  label matches the reference's; false negatives (reference window positive,
  ours negative) and false positives are reported as rates over the
  reference's positive and negative windows. Windows here are consecutive
  from the first frame, ``[0, 30), [30, 60), ...``, and a last window shorter
  than 30 frames is left out. (NoScope's script centres its windows on
  frames 0, 30, 60, ... so its first window holds only 15 frames and is
  never positive; the consecutive windows avoid that artefact.)

Answers that were never published (``None``) are replaced by the last answer
the application received for that stream (:func:`carry_forward`), since that
is what it still believes; before the first answer, the empty answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from streamedge.bench.answers import (
    EMPTY_ANSWER,
    IOU_THRESHOLD,
    answers_agree,
    counts_agree,
    is_positive,
)
from streamedge.records import JSON

WINDOW_SIZE = 30
"""NoScope's window length in frames."""
WINDOW_MIN_POSITIVE = 28
"""Positive frames that make a NoScope window positive."""


def carry_forward(answers: Sequence[JSON | None]) -> list[JSON]:
    """Replace each missing answer by the last one before it (the empty answer at first)."""
    out: list[JSON] = []
    last = EMPTY_ANSWER
    for answer in answers:
        if answer is not None:
            last = answer
        out.append(last)
    return out


def window_labels(
    positives: Sequence[bool],
    *,
    size: int = WINDOW_SIZE,
    min_positive: int = WINDOW_MIN_POSITIVE,
) -> list[bool]:
    """Label consecutive windows of ``size`` frames: positive when ≥ ``min_positive`` are.

    A last window shorter than ``size`` is left out.

    Raises:
        ValueError: ``size`` < 1 or ``min_positive`` not in ``1..size``.
    """
    if size < 1 or not 1 <= min_positive <= size:
        msg = f"need size >= 1 and 1 <= min_positive <= size, got {size}, {min_positive}"
        raise ValueError(msg)
    full = len(positives) // size
    return [sum(positives[w * size : (w + 1) * size]) >= min_positive for w in range(full)]


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowedAccuracy:
    """NoScope's windowed accuracy of one answer sequence against the reference."""

    windows: int
    """Complete windows compared."""
    positive_windows: int
    """Windows the reference labels positive."""
    accuracy: float | None
    """Fraction of windows whose labels match (None without a complete window)."""
    false_negative_rate: float | None
    """Reference-positive windows we label negative, over reference-positive windows."""
    false_positive_rate: float | None
    """Reference-negative windows we label positive, over reference-negative windows."""

    def to_json(self) -> JSON:
        """A JSON-serialisable dict."""
        return asdict(self)


def windowed_accuracy(
    reference: Sequence[bool],
    predicted: Sequence[bool],
    *,
    size: int = WINDOW_SIZE,
    min_positive: int = WINDOW_MIN_POSITIVE,
) -> WindowedAccuracy:
    """NoScope's windowed accuracy of per-frame binary labels.

    Args:
        reference: the full model's per-frame labels (True: something is there).
        predicted: the labels under test, same length.
        size: frames per window (NoScope: 30).
        min_positive: positive frames that make a window positive (NoScope: 28).

    Raises:
        ValueError: the sequences differ in length, or the window parameters are invalid.
    """
    if len(reference) != len(predicted):
        msg = f"{len(reference)} reference labels but {len(predicted)} predicted"
        raise ValueError(msg)
    ref_w = window_labels(reference, size=size, min_positive=min_positive)
    got_w = window_labels(predicted, size=size, min_positive=min_positive)
    positives = sum(ref_w)
    negatives = len(ref_w) - positives
    fn = sum(1 for r, g in zip(ref_w, got_w, strict=True) if r and not g)
    fp = sum(1 for r, g in zip(ref_w, got_w, strict=True) if g and not r)
    return WindowedAccuracy(
        windows=len(ref_w),
        positive_windows=positives,
        accuracy=1.0 - (fn + fp) / len(ref_w) if ref_w else None,
        false_negative_rate=fn / positives if positives else None,
        false_positive_rate=fp / negatives if negatives else None,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Accuracy:
    """How well a sequence of answers matches the reference, frame by frame and windowed."""

    frames: int
    agreement: float
    """Fraction of frames whose answer agrees with the reference (boxes at IoU ≥ 0.5)."""
    count_agreement: float
    """Fraction of frames with the reference's object count."""
    presence_agreement: float
    """Fraction of frames with the reference's "anything there?" label."""
    windowed: WindowedAccuracy

    def to_json(self) -> JSON:
        """A JSON-serialisable dict."""
        doc = asdict(self)
        doc["windowed"] = self.windowed.to_json()
        return doc


def frame_agreement(
    reference: Sequence[JSON | None],
    answers: Sequence[JSON | None],
    *,
    iou_threshold: float = IOU_THRESHOLD,
) -> list[bool]:
    """Per frame, whether the answer agrees with the reference (answers taken as given)."""
    if len(reference) != len(answers):
        msg = f"{len(reference)} reference answers but {len(answers)} answers"
        raise ValueError(msg)
    return [
        answers_agree(r, a, iou_threshold=iou_threshold)
        for r, a in zip(reference, answers, strict=True)
    ]


def accuracy(
    reference: Sequence[JSON | None],
    answers: Sequence[JSON | None],
    *,
    iou_threshold: float = IOU_THRESHOLD,
    window_size: int = WINDOW_SIZE,
    window_min_positive: int = WINDOW_MIN_POSITIVE,
    fill_missing: bool = True,
) -> Accuracy:
    """Score answers against the reference answers to the same frames of one stream.

    Args:
        reference: the full model's answer to each frame.
        answers: the answer given for each frame; ``None`` where none was
            published (replaced by the previous answer when ``fill_missing``).
        iou_threshold: IoU at which two boxes match.
        window_size: NoScope window length.
        window_min_positive: positive frames that make a window positive.
        fill_missing: carry the last answer forward over ``None`` entries.

    Raises:
        ValueError: the sequences differ in length.
    """
    return pooled_accuracy(
        [(reference, answers)],
        iou_threshold=iou_threshold,
        window_size=window_size,
        window_min_positive=window_min_positive,
        fill_missing=fill_missing,
    )


def pooled_accuracy(
    streams: Sequence[tuple[Sequence[JSON | None], Sequence[JSON | None]]],
    *,
    iou_threshold: float = IOU_THRESHOLD,
    window_size: int = WINDOW_SIZE,
    window_min_positive: int = WINDOW_MIN_POSITIVE,
    fill_missing: bool = True,
) -> Accuracy:
    """:func:`accuracy` over several streams at once: frames and windows are pooled.

    Each stream is a ``(reference answers, answers)`` pair; missing answers
    are carried forward within their own stream, and windows never span two
    streams.
    """
    frames = agree = same_count = same_presence = 0
    windows = positive_windows = fn = fp = 0
    for reference, answers in streams:
        got = carry_forward(answers) if fill_missing else list(answers)
        flags = frame_agreement(reference, got, iou_threshold=iou_threshold)
        frames += len(flags)
        agree += sum(flags)
        same_count += sum(counts_agree(r, a) for r, a in zip(reference, got, strict=True))
        ref_pos = [is_positive(r) for r in reference]
        got_pos = [is_positive(a) for a in got]
        same_presence += sum(r == g for r, g in zip(ref_pos, got_pos, strict=True))
        ref_w = window_labels(ref_pos, size=window_size, min_positive=window_min_positive)
        got_w = window_labels(got_pos, size=window_size, min_positive=window_min_positive)
        windows += len(ref_w)
        positive_windows += sum(ref_w)
        fn += sum(1 for r, g in zip(ref_w, got_w, strict=True) if r and not g)
        fp += sum(1 for r, g in zip(ref_w, got_w, strict=True) if g and not r)
    negative_windows = windows - positive_windows
    return Accuracy(
        frames=frames,
        agreement=agree / frames if frames else 1.0,
        count_agreement=same_count / frames if frames else 1.0,
        presence_agreement=same_presence / frames if frames else 1.0,
        windowed=WindowedAccuracy(
            windows=windows,
            positive_windows=positive_windows,
            accuracy=1.0 - (fn + fp) / windows if windows else None,
            false_negative_rate=fn / positive_windows if positive_windows else None,
            false_positive_rate=fp / negative_windows if negative_windows else None,
        ),
    )
