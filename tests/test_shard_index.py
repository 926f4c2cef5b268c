"""Issue 11 item 5: above INDEX_THRESHOLD shards manifest.json keeps its shard list in shards/index.jsonl
(read back transparently), and partial stats are binary (older stores' JSON partials still read)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from motiondata.errors import StoreError
from motiondata.loader.shard_reader import resolve_shards
from motiondata.pipeline import outcome
from motiondata.pipeline.runner import run_job
from motiondata.pipeline.spec import load_spec
from motiondata.store import layout, manifest
from motiondata.store.manifest import read_job_manifest
from motiondata.store.shards import iter_shard
from motiondata.store.stats import RunningStats, read_partial_stats, write_partial_stats
from motiondata.store.validate import validate_store
from tests.factories_pipeline import write_libero_hdf5, write_spec
from tests.factories_store import build_store


@pytest.fixture
def small_threshold(monkeypatch):
    monkeypatch.setattr(manifest, "INDEX_THRESHOLD", 2)


def _snapshot(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


def test_built_store_lists_its_shards_in_the_index(tmp_path, small_threshold):
    hdf5 = write_libero_hdf5(tmp_path / "a.hdf5", episodes=3, steps=12, size=16)
    spec = load_spec(write_spec(tmp_path / "spec.yaml", [{"kind": "hdf5", "path": str(hdf5), "name": "a"}],
                                per_shard=1, size=[16, 16]))
    out = tmp_path / "out"
    result = run_job(spec, out, executor="local", show_progress=False)
    doc = json.loads(layout.job_manifest(out).read_text())
    assert "shards" not in doc and doc["shard_index"]["count"] == 3 == result.shards_total
    lines = layout.shard_index(out).read_text().splitlines()
    assert [json.loads(line)["shard"] for line in lines] == [layout.shard_name(i) for i in range(3)]
    job = read_job_manifest(out)
    assert [e["num_samples"] for e in job["shards"]] == [json.loads(line)["num_samples"] for line in lines]
    assert validate_store(out) == []
    streamed = sum(1 for info in resolve_shards(str(out)) for _ in iter_shard(info.url))
    assert streamed == sum(e["num_samples"] for e in job["shards"]) > 0
    before = _snapshot(out)
    run_job(spec, out, executor="local", show_progress=False)
    assert _snapshot(out) == before  # a second run writes nothing, the index included


def test_small_stores_keep_the_inline_list(tmp_path):
    build_store(tmp_path, shards=2)
    assert len(json.loads(layout.job_manifest(tmp_path).read_text())["shards"]) == 2
    assert not layout.shard_index(tmp_path).exists()


@pytest.mark.parametrize("damage", ["missing", "truncated", "edited"])
def test_a_damaged_index_fails_validate_and_readers(tmp_path, small_threshold, damage):
    build_store(tmp_path, shards=3)
    path = layout.shard_index(tmp_path)
    lines = path.read_text().splitlines(keepends=True)
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_text("".join(lines[:-1]))
    else:
        path.write_text("".join(lines).replace('"num_samples":6', '"num_samples":5', 1))
    problems = validate_store(tmp_path, deep=False)
    assert any(p.startswith("manifest.json: shard index") and "rerun" in p for p in problems), problems
    with pytest.raises(StoreError, match="shard index|index.jsonl"):
        resolve_shards(str(tmp_path))


def test_json_partials_of_older_stores_still_merge(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "shards").mkdir()
    parts = []
    for index in range(3):
        part = RunningStats()
        part.update("actions", rng.normal(size=(20, 3)) * 10.0 ** index)
        parts.append(part)
        write_partial_stats(tmp_path, index, part)
    binary = outcome.merge_stats(tmp_path, [0, 1, 2])
    for index, part in enumerate(parts):
        layout.shard_stats(tmp_path, index).unlink()
        layout.shard_stats_json(tmp_path, index).write_text(json.dumps(part.to_dict()))
    assert read_partial_stats(tmp_path, 1).to_dict() == parts[1].to_dict()
    assert outcome.merge_stats(tmp_path, [0, 1, 2]) == binary


def test_a_truncated_binary_partial_is_named(tmp_path):
    part = RunningStats()
    part.update("actions", np.arange(12.0).reshape(4, 3))
    path = write_partial_stats(tmp_path, 0, part)
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(StoreError, match="partial stats .*shard-000000.stats.bin"):
        read_partial_stats(tmp_path, 0)


def test_bad_shard_entries_are_still_worded_by_the_schema(tmp_path):
    build_store(tmp_path, shards=2)
    job = read_job_manifest(tmp_path)
    assert manifest.check_job_manifest(job) == []
    job["shards"][1]["sha256"] = "not-a-digest"
    job["shards"][0]["num_samples"] = True
    problems = manifest.check_job_manifest(job)
    assert any("shards[1].sha256" in p for p in problems) and any("shards[0].num_samples" in p for p in problems)
