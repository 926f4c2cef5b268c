"""Episode tables + sample recipes: offsets, pads, rows, seconds, drop_padded, images, random access, reshard."""

from __future__ import annotations

import numpy as np
import pytest

from motiondata.errors import SpecError
from motiondata.pipeline.recipe import cut_sample, cut_samples, parse_recipe
from motiondata.pipeline.tables import Table, frame_table, pad_rows
from motiondata.store.sample_codec import decode_image, encode_image

INFO = {"id": "ep", "source": "s", "fps": 10.0, "language": "go", "length": 20}


def _tables() -> dict[str, Table]:
    actions = np.arange(20 * 2, dtype=np.float32).reshape(20, 2)
    latents = np.arange(5, dtype=np.float32)[:, None] * np.ones((5, 3), np.float32)  # rows at 0, 4, ..., 16
    tokens, lengths = pad_rows([np.arange(n, dtype=np.int32) + 1 for n in (3, 5, 2, 4)], np.int32)
    return {"actions": frame_table(actions),
            "lat": Table(latents, np.arange(5) * 4, "latent"),
            "tok": Table(tokens, np.array([0, 5, 10, 15]), "chunk", lengths),
            "txt": Table(np.ones((1, 4), np.float32), np.zeros(1, np.int64), "episode")}


def test_frame_offsets_pad_outside_the_episode():
    recipe = parse_recipe({"fields": {"a": {"from": "actions", "offsets": [-2, 0, 2]}}})
    s = cut_sample(recipe, _tables(), INFO, 1)
    assert s["__key__"] == "ep_t000001"
    assert s["a.pad"].tolist() == [True, False, False]
    np.testing.assert_array_equal(s["a"][1], [2, 3])
    np.testing.assert_array_equal(s["a"][0], [0, 0])  # zero-filled, never another episode's data
    assert s["meta"]["frames"]["a"] == [-1, 1, 3]


def test_range_offsets_and_drop_padded():
    recipe = parse_recipe({"stride": 5, "drop_padded": ["target"],
                           "fields": {"target": {"from": "actions", "offsets": {"start": 0, "stop": 6}}}})
    samples = cut_samples(recipe, _tables(), INFO)
    assert [s["meta"]["anchor"] for s in samples] == [0, 5, 10]  # anchor 15 would read frames 15..20
    assert all(s["target"].shape == (6, 2) and not s["target.pad"].any() for s in samples)


def test_latent_tables_answer_causally_and_by_rows():
    recipe = parse_recipe({"fields": {"z": {"from": "lat", "offsets": [0]},
                                      "hist": {"from": "lat", "offsets": {"start": -2, "stop": 1}, "index": "rows"}}})
    s = cut_sample(recipe, _tables(), INFO, 7)
    assert s["meta"]["frames"]["z"] == [4]  # the latent available at frame 7 has seen frames up to 4
    assert s["meta"]["frames"]["hist"] == [-1, 0, 4]
    assert s["hist.pad"].tolist() == [True, False, False]


def test_exact_tables_pad_where_no_row_and_carry_lengths():
    recipe = parse_recipe({"fields": {"tok": {"from": "tok", "offsets": [0, 5]}, "txt": {"from": "txt"}}})
    s = cut_sample(recipe, _tables(), INFO, 5)
    assert s["tok.len"].tolist() == [5, 2]
    assert s["tok"].shape == (2, 5) and s["tok"][1, :2].tolist() == [1, 2] and s["tok"][1, 2:].tolist() == [0] * 3
    off = cut_sample(recipe, _tables(), INFO, 6)
    assert off["tok.pad"].tolist() == [True, True]  # no chunk starts at 6 or 11
    assert off["txt.pad"].tolist() == [False]  # episode tables answer every frame


def test_seconds_offsets_use_the_episode_fps():
    recipe = parse_recipe({"unit": "seconds", "fields": {"a": {"from": "actions", "offsets": [-0.5, 0.5]}}})
    assert cut_sample(recipe, _tables(), INFO, 10)["meta"]["frames"]["a"] == [5, 15]


@pytest.mark.parametrize("bad", [
    {"fields": {}},
    {"fields": {"a": {"offsets": [0]}}},
    {"fields": {"a": {"from": "x", "offsets": []}}},
    {"fields": {"a": {"from": "x", "offsets": {"start": 0}}}},
    {"fields": {"a": {"from": "x", "offsets": [0], "index": "latents"}}},
    {"fields": {"a.pad": {"from": "x"}}},
    {"stride": 0, "fields": {"a": {"from": "x"}}},
    {"drop_padded": ["b"], "fields": {"a": {"from": "x"}}},
    {"images": {"format": "gif"}, "fields": {"a": {"from": "x"}}},
])
def test_bad_recipes_are_spec_errors(bad):
    with pytest.raises(SpecError):
        parse_recipe(bad)


def test_missing_table_names_the_fix():
    recipe = parse_recipe({"fields": {"a": {"from": "vae.latents"}}})
    with pytest.raises(SpecError, match="add the stage"):
        cut_sample(recipe, _tables(), INFO, 0)


def test_images_round_trip_as_jpg_png_and_png16():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (16, 24, 3), dtype=np.uint8)
    png = encode_image(image, "png")
    assert png.ext == "png" and np.array_equal(decode_image(png.data), image)
    yy, xx = np.mgrid[0:16, 0:24]
    smooth = np.stack([yy * 12, xx * 8, (yy + xx) * 5], axis=-1).astype(np.uint8)
    jpg = decode_image(encode_image(smooth, "jpg", 95).data)
    assert jpg.shape == smooth.shape and np.abs(jpg.astype(int) - smooth).mean() < 4
    depth = decode_image(encode_image(np.full((8, 8), 1.25, np.float32), "png16").data)
    assert depth.dtype == np.uint16 and depth.shape == (8, 8) and (depth == 1250).all()  # millimetres
