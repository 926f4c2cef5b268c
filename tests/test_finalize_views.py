"""Issue 11 item 5: finalize does not read again the shard manifests of shards the run built or found done
(it keeps a small view of each, ``manifest.finalize_view``), and writes the same job files as a finalize that
reads every manifest from disk."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from motiondata.pipeline import runner
from motiondata.pipeline.plan import plan_shards
from motiondata.pipeline.runner import JobResult, finalize, run_job
from motiondata.pipeline.spec import load_spec
from motiondata.store import layout, manifest
from tests.factories_pipeline import write_libero_hdf5, write_spec


@pytest.fixture
def spec(tmp_path):
    a = write_libero_hdf5(tmp_path / "a.hdf5", episodes=4, steps=10, size=16, nan_demo=1)
    return load_spec(write_spec(tmp_path / "spec.yaml", [{"kind": "hdf5", "path": str(a), "name": "a"}],
                                per_shard=1, size=[16, 16]))


@pytest.fixture
def reads(monkeypatch):
    """The shard indices finalize reads from disk."""
    asked: list[int] = []
    original = manifest.done_manifests

    def counting(out, indices):
        asked.extend(indices)
        return original(out, indices)

    monkeypatch.setattr(manifest, "done_manifests", counting)
    return asked


def _job_files(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in (layout.JOB_MANIFEST, "stats.json", "errors.jsonl")}


def test_a_build_and_a_rerun_read_no_manifest_again_and_write_what_a_full_read_writes(spec, tmp_path, reads):
    out = tmp_path / "out"
    first = run_job(spec, out, executor="local", show_progress=False)
    assert first.shards_built == 4 and first.num_errors == 1 and reads == []  # all four were built this run
    again = run_job(spec, out, executor="local", show_progress=False)
    assert again.shards_skipped == 4 and reads == []  # found done at the start: their views are kept
    written = _job_files(out)
    plans = [dataclasses.replace(p) for p in plan_shards(spec)[0]]
    for name in written:
        (out / name).unlink()
    full = JobResult(out, len(plans))
    finalize(spec, out, plans, [], full, known=None)  # every manifest read from disk
    assert sorted(reads) == [0, 1, 2, 3] and _job_files(out) == written
    assert (full.num_samples, full.num_episodes, full.num_errors) == (again.num_samples, again.num_episodes, 1)


def test_a_known_shard_whose_tar_changed_size_is_read_from_disk(spec, tmp_path, reads):
    out = tmp_path / "out"
    run_job(spec, out, executor="local", show_progress=False)
    plans = plan_shards(spec)[0]
    known = {i: manifest.finalize_view(manifest.read_shard_manifest(out, i)) for i in range(4)}
    assert all(len(str(v)) < 1000 for v in known.values())  # views, not the per-sample lists
    with layout.shard_tar(out, 2).open("ab") as fh:
        fh.write(b"\0" * 512)  # no longer the size its manifest lists: not done
    found = runner._done_manifests(out, plans, known)
    assert reads == [2] and sorted(found) == [0, 1, 3]


def test_the_report_of_a_large_store_reads_a_spread_of_its_shards(spec, tmp_path, monkeypatch):
    from motiondata.inspect import report

    monkeypatch.setattr(report, "REPORT_SHARDS", 2)
    out = tmp_path / "out"
    result = run_job(spec, out, executor="local", show_progress=False)
    text = layout.report_file(out).read_text()
    assert f"- episodes: {result.num_episodes}," in text  # counts from the job manifest, not the shards read
    assert "from 2 evenly spaced shards of 4" in text
    assert text.count("\n| a_") == 2  # the episode rows of shards 0 and 3 only (one episode each)
