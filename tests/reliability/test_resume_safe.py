"""Issue 9 item 1: resume is safe when inputs change; stage config/weight changes are detected."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from motiondata.errors import MotionDataError
from motiondata.pipeline.runner import run_job
from motiondata.pipeline.spec import load_spec
from motiondata.store import layout
from tests.factories_pipeline import write_libero_hdf5, write_spec
from tests.reliability.accounting import assert_accounted


def _build(spec: Path, out: Path, **kwargs):
    return run_job(load_spec(spec), out, executor="local", show_progress=False, **kwargs)


def _tars(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / layout.SHARDS_DIR).glob("*.tar"))}


def _snapshot(out: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(out)): (p.stat().st_mtime_ns, p.stat().st_size) for p in out.rglob("*") if p.is_file()}


@pytest.fixture()
def folder(tmp_path: Path) -> dict:
    data = tmp_path / "data"
    data.mkdir()
    for i, name in enumerate(("b", "c")):
        write_libero_hdf5(data / f"{name}.hdf5", episodes=2, steps=10, size=16, seed=i)
    spec = write_spec(tmp_path / "spec.yaml", [{"kind": "hdf5", "path": str(data), "name": "lib"}], per_shard=2)
    return {"data": data, "spec": spec, "out": tmp_path / "out"}


def test_a_file_that_sorts_first_is_appended_as_a_new_shard(folder):
    first = _build(folder["spec"], folder["out"])
    assert first.complete and first.shards_total == 2 and first.num_episodes == 4
    before = _tars(folder["out"])
    write_libero_hdf5(folder["data"] / "a.hdf5", episodes=2, steps=10, size=16, seed=7)
    second = _build(folder["spec"], folder["out"])
    assert (second.shards_skipped, second.shards_built, second.shards_total) == (2, 1, 3)
    after = _tars(folder["out"])
    assert {k: after[k] for k in before} == before  # finished shards untouched
    counts = assert_accounted(folder["out"])
    assert counts["stored"] == 6 and counts["units"] == 6 and counts["job"]["complete"]
    new = layout.shard_manifest(folder["out"], 2).read_text()
    assert "lib_a_demo_0" in new and "lib_a_demo_1" in new


def test_a_changed_input_is_refused_then_rebuilt_exactly(folder):
    _build(folder["spec"], folder["out"])
    before, snapshot = _tars(folder["out"]), _snapshot(folder["out"])
    write_libero_hdf5(folder["data"] / "c.hdf5", episodes=2, steps=12, size=16, seed=9)  # new content
    with pytest.raises(MotionDataError) as err:
        _build(folder["spec"], folder["out"])
    line = str(err.value)
    assert "shard-000001" in line and "lib:c_demo_0" in line and "size/mtime differ" in line
    assert "--rebuild-changed" in line and "--out" in line and "\n" not in line
    assert _snapshot(folder["out"]) == snapshot  # refused before touching anything
    result = _build(folder["spec"], folder["out"], rebuild_changed=True)
    assert (result.shards_built, result.shards_skipped) == (1, 1)
    after = _tars(folder["out"])
    assert after["shard-000000.tar"] == before["shard-000000.tar"]
    assert after["shard-000001.tar"] != before["shard-000001.tar"]
    assert assert_accounted(folder["out"])["stored"] == 4
    assert _build(folder["spec"], folder["out"]).shards_built == 0  # settled


def test_a_removed_input_drops_out_with_its_zarr_groups(folder):
    _build(folder["spec"], folder["out"])
    os.remove(folder["data"] / "b.hdf5")
    with pytest.raises(MotionDataError, match="lib:b_demo_0 .removed from the input."):
        _build(folder["spec"], folder["out"])
    result = _build(folder["spec"], folder["out"], rebuild_changed=True)
    assert result.shards_built == 1 and result.complete
    assert not layout.zarr_episode(folder["out"], "lib_b_demo_0").exists()
    counts = assert_accounted(folder["out"])
    assert counts["stored"] == 2 and counts["job"]["num_samples"] == result.num_samples


def test_a_touched_small_file_or_unchanged_rerun_is_not_a_change(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_libero_hdf5(data / "a.hdf5", episodes=1, steps=6, size=8)
    spec = write_spec(tmp_path / "spec.yaml", [{"kind": "hdf5", "path": str(data), "name": "lib"}])
    _build(spec, tmp_path / "out")
    os.utime(data / "a.hdf5", ns=(1, 1))  # same bytes, other mtime: small files are fingerprinted by content
    assert (data / "a.hdf5").stat().st_size <= 1 << 16
    assert _build(spec, tmp_path / "out").shards_built == 0
    assert_accounted(tmp_path / "out")


def test_a_spec_change_is_refused_or_rebuilds_every_shard(folder, tmp_path):
    _build(folder["spec"], folder["out"])
    changed = write_spec(tmp_path / "spec2.yaml", [{"kind": "hdf5", "path": str(folder["data"]), "name": "lib"}],
                         per_shard=2, window=6)
    with pytest.raises(MotionDataError, match="spec changed since the store was built.*--rebuild-changed"):
        _build(changed, folder["out"])
    result = _build(changed, folder["out"], rebuild_changed=True)
    assert result.shards_built == 2 and result.complete
    assert_accounted(folder["out"])


@pytest.mark.slow
def test_replaced_stage_weights_are_refused_or_rebuilt(tmp_path):
    from motiondata.encode.vqgan import cached_vqgan_codec
    from motiondata.pipeline import shard_task
    from tests.factories_vqgan import write_taming_checkpoint

    config, weights, _ = write_taming_checkpoint(tmp_path / "vq", resolution=16, seed=0)
    write_libero_hdf5(tmp_path / "a.hdf5", episodes=2, steps=8, size=16)
    stage = {"name": "keyframes", "config": str(config), "weights": str(weights), "chunk": 4, "count": 2,
             "device": "cpu"}
    spec = write_spec(tmp_path / "spec.yaml", [{"kind": "hdf5", "path": str(tmp_path / "a.hdf5"), "name": "lib"}],
                      stages=[stage], per_shard=1, size=[16, 16])
    first = _build(spec, tmp_path / "out")
    assert first.complete and first.num_episodes == 2, first.problem
    before = _tars(tmp_path / "out")
    write_taming_checkpoint(tmp_path / "vq", resolution=16, seed=1)  # retrained weights, same path
    shard_task._stages_for.cache_clear()  # a fresh process in real use: models are cached per process and path
    cached_vqgan_codec.cache_clear()
    with pytest.raises(MotionDataError, match="stage keyframes changed since the store was built"):
        _build(spec, tmp_path / "out")
    result = _build(spec, tmp_path / "out", rebuild_changed=True)
    assert result.shards_built == 2 and result.complete
    assert _tars(tmp_path / "out") != before
    assert_accounted(tmp_path / "out")
