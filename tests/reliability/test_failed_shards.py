"""Issue 9 item 3: a failed shard never blocks the job; one bad unit never costs its neighbours."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from motiondata.pipeline import isolation, runner
from motiondata.pipeline.runner import run_job
from motiondata.pipeline.spec import load_spec
from motiondata.store import layout
from motiondata.store.manifest import check_job_manifest
from tests.factories_pipeline import write_libero_hdf5, write_spec
from tests.reliability.accounting import assert_accounted


def _build(spec: Path, out: Path, **kwargs):
    return run_job(load_spec(spec), out, executor="local", show_progress=False, **kwargs)


def _errors(out: Path) -> list[dict]:
    return [json.loads(line) for line in layout.errors_file(out).read_text().splitlines()]


def _widen_actions(path: Path, demo: int, width: int) -> None:
    with h5py.File(path, "a") as f:
        n = f[f"data/demo_{demo}/actions"].shape[0]
        del f[f"data/demo_{demo}/actions"]
        f.create_dataset(f"data/demo_{demo}/actions", data=np.zeros((n, width)))


@pytest.fixture()
def three_demos(tmp_path: Path) -> dict:
    hdf5 = write_libero_hdf5(tmp_path / "lib.hdf5", episodes=3, steps=8, size=8)
    spec = write_spec(tmp_path / "spec.yaml", [{"kind": "hdf5", "path": str(hdf5), "name": "lib"}], per_shard=3)
    return {"hdf5": hdf5, "spec": spec, "out": tmp_path / "out", "tmp": tmp_path}


def test_an_odd_action_width_is_a_record_and_its_neighbours_are_stored(three_demos):
    _widen_actions(three_demos["hdf5"], 1, 5000)
    result = _build(three_demos["spec"], three_demos["out"])
    assert result.complete and not result.failed and result.num_episodes == 2
    (record,) = [e for e in _errors(three_demos["out"]) if e["unit"] == "lib:demo_1"]
    assert record["stage"] == "shard" and "5000" in record["reason"] and "--retry-errors" in record["reason"]
    assert assert_accounted(three_demos["out"])["stored"] == 2


def test_differing_widths_across_shards_do_not_crash_finalize(tmp_path):
    hdf5 = write_libero_hdf5(tmp_path / "lib.hdf5", episodes=2, steps=8, size=8)
    _widen_actions(hdf5, 1, 12)
    spec = write_spec(tmp_path / "spec.yaml", [{"kind": "hdf5", "path": str(hdf5), "name": "lib"}], per_shard=1)
    result = _build(spec, tmp_path / "out")
    assert result.complete and result.num_episodes == 2
    job = assert_accounted(tmp_path / "out")["job"]
    assert any("shard-000001" in c and "actions" in c for c in job["stats_conflicts"])
    assert len(json.loads(layout.stats_file(tmp_path / "out").read_text())["norm_stats"]["actions"]["mean"]) == 7


def test_a_failed_shard_still_gives_manifest_stats_and_errors(three_demos, monkeypatch):
    spec = write_spec(three_demos["tmp"] / "s1.yaml", [{"kind": "hdf5", "path": str(three_demos["hdf5"]),
                                                         "name": "lib"}], per_shard=1)
    real = runner.build_shard

    def failing(spec_, plan, out):
        if plan.index == 1:
            raise RuntimeError("disk on fire")
        return real(spec_, plan, out)

    monkeypatch.setattr(runner, "build_shard", failing)
    result = _build(spec, three_demos["out"])
    assert not result.complete and result.failed == ["shard-000001: RuntimeError: disk on fire"]
    job = json.loads(layout.job_manifest(three_demos["out"]).read_text())
    assert job["complete"] is False and [s["shard"] for s in job["shards"]] == ["shard-000000", "shard-000002"]
    assert job["failed_shards"] == [{"shard": "shard-000001", "reason": "RuntimeError: disk on fire"}]
    assert check_job_manifest(job) == [] and layout.stats_file(three_demos["out"]).is_file()
    assert layout.errors_file(three_demos["out"]).is_file()
    assert assert_accounted(three_demos["out"])["stored"] == 2
    monkeypatch.setattr(runner, "build_shard", real)
    again = _build(spec, three_demos["out"])
    assert again.complete and (again.shards_built, again.shards_skipped) == (1, 2)
    assert assert_accounted(three_demos["out"])["stored"] == 3


def test_a_unit_that_kills_its_worker_is_isolated(three_demos, monkeypatch):
    real = runner.build_shard

    def dying(spec_, plan, out):  # what a segfault leaves: the progress file names the unit, the task errors
        if "lib:demo_2" in plan.unit_ids() and "lib:demo_2" not in dict(plan.excluded):
            isolation.mark_progress(out, plan.index, "lib:demo_2")
            raise RuntimeError("worker died (SIGSEGV)")
        return real(spec_, plan, out)

    monkeypatch.setattr(runner, "build_shard", dying)
    result = _build(three_demos["spec"], three_demos["out"])
    assert result.complete and result.num_episodes == 2
    (record,) = [e for e in _errors(three_demos["out"]) if e["unit"] == "lib:demo_2"]
    assert record["stage"] == "shard" and "worker died" in record["reason"]
    assert_accounted(three_demos["out"])


def test_a_stage_failing_everywhere_is_a_problem_and_marks_nothing_done(three_demos, tmp_path):
    spec = write_spec(tmp_path / "bad.yaml", [{"kind": "hdf5", "path": str(three_demos["hdf5"]), "name": "lib"}],
                      stages=[{"name": "motion"}], per_shard=1)
    result = _build(spec, three_demos["out"])
    assert result.problem and result.problem.startswith("stage motion failed on all 3 episodes: ")
    assert result.problem.endswith("fix the stage and rerun") and not result.complete
    assert not list((three_demos["out"] / "shards").glob("shard-*.json"))  # not done: a rerun rebuilds them
    job = json.loads(layout.job_manifest(three_demos["out"]).read_text())
    assert job["complete"] is False and len(job["failed_shards"]) == 3 and job["problem"] == result.problem
    assert_accounted(three_demos["out"])
    fixed = _build(three_demos["spec"], three_demos["out"])  # the stage fixed (here: dropped)
    assert fixed.complete and fixed.problem is None and fixed.num_episodes == 3
    assert_accounted(three_demos["out"])


def test_nothing_stored_is_a_problem(tmp_path):
    (tmp_path / "junk.hdf5").write_text("not hdf5")
    spec = write_spec(tmp_path / "spec.yaml", [{"kind": "hdf5", "path": str(tmp_path / "junk.hdf5"), "name": "j"}])
    result = _build(spec, tmp_path / "out")
    assert result.problem and result.problem.startswith("nothing could be stored: all 1 inputs were rejected")
    assert_accounted(tmp_path / "out")
    missing = write_spec(tmp_path / "m.yaml", [{"kind": "hdf5", "path": str(tmp_path / "nope"), "name": "m"}])
    assert _build(missing, tmp_path / "out2").problem.startswith("nothing could be stored")


def test_a_240_character_file_name_works_end_to_end(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    name = "x" * (240 - len(".hdf5")) + ".hdf5"
    write_libero_hdf5(data / name, episodes=2, steps=8, size=8)
    spec = write_spec(tmp_path / "spec.yaml", [{"kind": "hdf5", "path": str(data), "name": "lib"}])
    result = _build(spec, tmp_path / "out")
    assert result.complete and result.num_episodes == 2 and result.num_errors == 0, result.failed
    assert_accounted(tmp_path / "out")
    assert _build(spec, tmp_path / "out").shards_built == 0
