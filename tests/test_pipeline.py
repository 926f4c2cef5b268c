"""End-to-end job tests (in-process executor; the Ray path is in test_pipeline_ray.py)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
import zarr

from motiondata.cli import main as cli_main
from motiondata.pipeline.runner import run_job
from motiondata.pipeline.spec import load_spec
from motiondata.store import layout
from motiondata.store.validate import validate_store
from tests.factories_pipeline import write_libero_hdf5, write_spec, write_video_folder


@pytest.fixture()
def mixed_inputs(tmp_path: Path) -> dict:
    hdf5 = write_libero_hdf5(tmp_path / "libero.hdf5", episodes=4, nan_demo=1, missing_actions_demo=2,
                             mismatch_demo=3)
    good_hdf5 = write_libero_hdf5(tmp_path / "good.hdf5", episodes=2, seed=5)
    (tmp_path / "broken.hdf5").write_bytes(good_hdf5.read_bytes()[:5000])
    videos = write_video_folder(tmp_path / "videos")
    spec = write_spec(tmp_path / "spec.yaml", [
        {"kind": "hdf5", "path": str(hdf5), "name": "libero"},
        {"kind": "hdf5", "path": str(good_hdf5), "name": "good"},
        {"kind": "hdf5", "path": str(tmp_path / "broken.hdf5"), "name": "broken"},
        {"kind": "video", "path": str(videos), "name": "web"},
    ], size=[24, 24])
    return {"spec": spec, "tmp": tmp_path}


def _snapshot(out: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(out)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted(out.rglob("*")) if p.is_file()}


def test_bad_inputs_become_records_and_good_episodes_survive(mixed_inputs):
    out = mixed_inputs["tmp"] / "out"
    result = run_job(load_spec(mixed_inputs["spec"]), out, executor="local", show_progress=False)
    assert not result.failed
    errors = [json.loads(line) for line in layout.errors_file(out).read_text().splitlines()]
    reasons = {(e["episode"] or Path(e["file"]).name): e["reason"] for e in errors}
    assert any("libero_demo_1" in k for k in reasons), reasons  # NaN actions
    assert any("libero_demo_2" in k for k in reasons), reasons  # missing actions
    assert any("libero_demo_3" in k for k in reasons), reasons  # length mismatch
    assert any("broken" in str(e["file"]) for e in errors)  # truncated HDF5
    bad_videos = {Path(e["file"]).name for e in errors if e["file"].endswith(".mp4")}
    assert {"empty.mp4", "not_a_video.mp4", "truncated.mp4"} <= bad_videos, errors
    for e in errors:
        assert e["file"] and e["stage"] and e["reason"]
    job = json.loads(layout.job_manifest(out).read_text())
    episodes = set(json.loads(cli_json(["inspect", str(out), "--json"]))["episodes"])
    assert {"libero_demo_0", "good_demo_0", "good_demo_1", "web_clip_0", "web_clip_1"} <= episodes
    assert job["num_episodes"] == len(episodes) == 5
    assert validate_store(out) == []


def cli_json(argv: list[str]) -> str:
    import contextlib

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli_main(argv) == 0
    return buf.getvalue()


def test_second_build_writes_nothing_and_stores_read_with_plain_tools(mixed_inputs):
    out = mixed_inputs["tmp"] / "out"
    spec = load_spec(mixed_inputs["spec"])
    run_job(spec, out, executor="local", show_progress=False)
    before = _snapshot(out)
    time.sleep(0.05)
    result = run_job(spec, out, executor="local", show_progress=False)
    assert result.shards_built == 0 and result.shards_skipped == result.shards_total
    assert _snapshot(out) == before
    job = json.loads(layout.job_manifest(out).read_text())
    # plain tarfile: no pickle members, all members .npy/.json, samples adjacent
    for shard in job["shards"]:
        with tarfile.open(out / shard["tar"]) as tar:
            names = tar.getnames()
        assert all(n.endswith((".npy", ".json")) for n in names)
        keys = [n.split(".")[0] for n in names]
        assert keys == sorted(keys, key=keys.index)  # each key's members are contiguous
        assert len(set(keys)) == shard["num_samples"]
    # plain webdataset
    urls = [str(out / s["tar"]) for s in job["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert len(samples) == job["num_samples"]
    first = samples[0]
    actions = np.load(io.BytesIO(first["actions.npy"]), allow_pickle=False)
    assert actions.dtype == np.float32 and actions.ndim == 2
    rgb = np.load(io.BytesIO(first["rgb.agentview.npy"]), allow_pickle=False)
    assert rgb.dtype == np.uint8 and rgb.shape[1:] == (24, 24, 3)
    # plain zarr
    root = zarr.open_group(str(out / "episodes.zarr"), mode="r")
    assert "libero_demo_0" in set(root.group_keys())


def test_merged_stats_match_all_actions(mixed_inputs):
    out = mixed_inputs["tmp"] / "out"
    run_job(load_spec(mixed_inputs["spec"]), out, executor="local", show_progress=False)
    stats = json.loads(layout.stats_file(out).read_text())["norm_stats"]["actions"]
    root = zarr.open_group(str(out / "episodes.zarr"), mode="r")
    actions = np.concatenate([np.asarray(root[ep]["actions"]) for ep in sorted(root.group_keys())
                              if "actions" in root[ep]])
    np.testing.assert_allclose(stats["mean"], actions.mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(stats["std"], actions.std(0), rtol=1e-6, atol=1e-7)
    # quantiles: sketch with 0.5% relative accuracy, plus the rank step of a small sample
    for q, name in ((0.01, "q01"), (0.99, "q99")):
        lo, hi = np.quantile(actions, max(q - 0.01, 0), axis=0), np.quantile(actions, min(q + 0.01, 1), axis=0)
        got = np.asarray(stats[name])
        assert np.all(got >= lo - 0.01 * np.abs(lo) - 1e-6) and np.all(got <= hi + 0.01 * np.abs(hi) + 1e-6)


def test_validate_names_corrupted_and_truncated_shard(mixed_inputs):
    out = mixed_inputs["tmp"] / "out"
    run_job(load_spec(mixed_inputs["spec"]), out, executor="local", show_progress=False)
    assert cli_main(["validate", str(out)]) == 0
    tar = layout.shard_tar(out, 1)
    data = bytearray(tar.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tar.write_bytes(bytes(data))
    problems = validate_store(out)
    assert problems and any("shard-000001" in p for p in problems)
    assert cli_main(["validate", str(out)]) == 1
    tar0 = layout.shard_tar(out, 0)
    tar0.write_bytes(tar0.read_bytes()[:1000])
    assert any("shard-000000" in p for p in validate_store(out))


@pytest.mark.slow
def test_killed_build_resumes_to_identical_shards(mixed_inputs, tmp_path):
    spec_path = mixed_inputs["spec"]
    full = tmp_path / "full"
    run_job(load_spec(spec_path), full, executor="local", show_progress=False)
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "motiondata.cli", "build", str(spec_path), "--out", str(killed),
                             "--executor", "local", "-q"], env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not layout.shard_manifest(killed, 0).exists():
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert layout.shard_manifest(killed, 0).exists(), "the first shard never finished"
    assert not layout.job_manifest(killed).exists() or not json.loads(layout.job_manifest(killed).read_text())["complete"]
    run_job(load_spec(spec_path), killed, executor="local", show_progress=False)
    for shard in sorted((full / "shards").glob("*.tar")):
        assert (killed / "shards" / shard.name).read_bytes() == shard.read_bytes(), shard.name
    assert sorted(p.name for p in (killed / "shards").iterdir()) == sorted(p.name for p in (full / "shards").iterdir())
    assert validate_store(killed) == []
