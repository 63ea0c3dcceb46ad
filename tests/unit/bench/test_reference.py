"""Reference answers cached on disk: hits, keys that invalidate, atomic writes, corrupt files.

The model here is a fake that counts its calls (the caching logic is what is
tested); the frames are real, from the committed vtest excerpt.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from streamedge.bench.reference import Reference, ReferenceStore, reference_for
from streamedge.bench.workloads import Derivation, StreamSpec
from streamedge.datasets import find_video
from streamedge.records import Frame, ModelInput, ModelRef, Prediction

FRAMES = 3


class CountingModel:
    """Answers with the mean grey level of the frame, and counts its runs."""

    def __init__(self, version: str = "1") -> None:
        self.ref = ModelRef("fake", version)
        self.calls = 0

    def predict(self, item: ModelInput) -> Prediction:
        assert isinstance(item, Frame)
        self.calls += 1
        return Prediction(answer={"count": 0, "boxes": [], "mean": float(np.mean(item.image))})


@pytest.fixture
def spec() -> StreamSpec:
    return StreamSpec(video=find_video("vtest", excerpt_only=True), max_frames=FRAMES)


def get(
    spec: StreamSpec, model: CountingModel, store: ReferenceStore, **config: object
) -> Reference:
    return reference_for(
        spec,
        lambda: model,
        store,
        model_name=str(model.ref),
        model_config={"type": "fake", **config},
    )


def test_second_request_is_served_from_disk(tmp_path: Path, spec: StreamSpec) -> None:
    store = ReferenceStore(tmp_path)
    model = CountingModel()
    first = get(spec, model, store)
    assert model.calls == FRAMES
    assert first.frames == FRAMES
    assert len(first.infer_s) == FRAMES
    assert first.ts == pytest.approx([0.0, 0.1, 0.2])  # the excerpt is 10 fps
    again = get(spec, model, ReferenceStore(tmp_path))  # a new store: read from the file
    assert model.calls == FRAMES  # not recomputed
    assert again.answers == first.answers
    # Only the final file is left: the temporary file was renamed into place.
    assert [p.name for p in tmp_path.iterdir()] == [store.path_for(first.key).name]


def test_model_loader_is_called_only_on_a_miss(tmp_path: Path, spec: StreamSpec) -> None:
    store = ReferenceStore(tmp_path)
    get(spec, CountingModel(), store)
    loads: list[int] = []

    def load() -> CountingModel:
        loads.append(1)
        return CountingModel()

    reference_for(spec, load, store, model_name="fake@1", model_config={"type": "fake"})
    assert loads == []


def test_model_version_config_and_video_change_the_key(tmp_path: Path, spec: StreamSpec) -> None:
    store = ReferenceStore(tmp_path)
    v1 = CountingModel("1")
    get(spec, v1, store)
    v2 = CountingModel("2")
    get(spec, v2, store)
    assert v2.calls == FRAMES  # a new version is a new key
    retuned = CountingModel("2")
    get(spec, retuned, store, threshold=0.9)
    assert retuned.calls == FRAMES  # so is any change of the model's configuration
    brighter = CountingModel("2")
    shifted = StreamSpec(video=spec.video, max_frames=FRAMES, derivation=Derivation(offset=20))
    ref = get(shifted, brighter, store, threshold=0.9)
    assert brighter.calls == FRAMES  # and a derived stream
    assert ref.key["derivation"]["offset"] == 20
    assert len(list(tmp_path.glob("*.json"))) == 4


def test_a_corrupt_file_is_recomputed_with_a_warning(
    tmp_path: Path, spec: StreamSpec, caplog: pytest.LogCaptureFixture
) -> None:
    store = ReferenceStore(tmp_path)
    model = CountingModel()
    first = get(spec, model, store)
    path = store.path_for(first.key)
    path.write_text(path.read_text()[:50])  # a truncated file
    with caplog.at_level(logging.WARNING, logger="streamedge.bench.reference"):
        again = get(spec, model, store)
    assert model.calls == 2 * FRAMES
    assert again.answers == first.answers
    assert any("corrupt" in r.getMessage() for r in caplog.records)
    assert store.corrupt == 1
    json.loads(path.read_text())  # rewritten whole


@pytest.mark.parametrize(
    "content",
    [
        "[]",
        '{"key": KEY, "answers": []}',
        '{"key": KEY, "answers": [1], "infer_s": [0.1], "ts": [0.0], "complete": true}',
        '{"key": KEY, "answers": [{}], "infer_s": [0.1, 0.2], "ts": [0.0], "complete": true}',
        '{"key": KEY, "answers": [{}], "infer_s": [0.1], "ts": [0.0]}',
    ],
)
def test_malformed_documents_are_rejected(
    tmp_path: Path, spec: StreamSpec, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = ReferenceStore(tmp_path)
    model = CountingModel()
    first = get(spec, model, store)
    # The right key, so that only the malformed part can be what is rejected.
    store.path_for(first.key).write_text(content.replace("KEY", json.dumps(first.key)))
    with caplog.at_level(logging.WARNING, logger="streamedge.bench.reference"):
        get(spec, model, store)
    assert model.calls == 2 * FRAMES
    assert any("corrupt" in r.getMessage() for r in caplog.records)


def test_a_file_holding_another_key_is_recomputed(tmp_path: Path, spec: StreamSpec) -> None:
    store = ReferenceStore(tmp_path)
    model = CountingModel()
    first = get(spec, model, store)
    path = store.path_for(first.key)
    doc = json.loads(path.read_text())
    doc["key"]["video"] = "0" * 64
    path.write_text(json.dumps(doc))
    get(spec, model, store)
    assert model.calls == 2 * FRAMES
    assert store.corrupt == 1


def test_recompute_ignores_the_stored_file(tmp_path: Path, spec: StreamSpec) -> None:
    store = ReferenceStore(tmp_path)
    model = CountingModel()
    get(spec, model, store)
    reference_for(
        spec,
        lambda: model,
        store,
        model_name="fake@1",
        model_config={"type": "fake"},
        recompute=True,
    )
    assert model.calls == 2 * FRAMES


def test_a_longer_stored_reference_serves_shorter_requests(tmp_path: Path) -> None:
    video = find_video("vtest", excerpt_only=True)
    store = ReferenceStore(tmp_path)
    model = CountingModel()
    three = get(StreamSpec(video=video, max_frames=3), model, store)
    assert not three.complete
    two = get(StreamSpec(video=video, max_frames=2), model, store)
    assert model.calls == 3  # served from the 3-frame file
    assert two.answers == three.answers[:2]
    assert two.ts == three.ts[:2]
    four = get(StreamSpec(video=video, max_frames=4), model, store)
    assert model.calls == 3 + 4  # not enough stored: recomputed, and the file grows
    assert four.answers[:3] == three.answers
    get(StreamSpec(video=video, max_frames=4), model, store)
    assert model.calls == 7
    assert len(list(tmp_path.glob("*.json"))) == 1  # one file per key, whatever the length
