"""Issue 9 item 4: rejected inputs can be retried; item 8's repair side: ``verify`` rebuilds bit-flipped shards."""

from __future__ import annotations

import json
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


def _errors(out: Path) -> list[dict]:
    return [json.loads(line) for line in layout.errors_file(out).read_text().splitlines()]


@pytest.fixture()
def nan_demo(tmp_path: Path) -> dict:
    data = tmp_path / "data"
    data.mkdir()
    write_libero_hdf5(data / "a.hdf5", episodes=2, steps=8, size=8, seed=1)
    write_libero_hdf5(data / "b.hdf5", episodes=2, steps=8, size=8, seed=2, nan_demo=1)
    spec = write_spec(tmp_path / "spec.yaml", [{"kind": "hdf5", "path": str(data), "name": "lib"}], per_shard=2)
    return {"data": data, "spec": spec, "out": tmp_path / "out"}


def test_a_plain_rerun_says_how_many_records_remain_and_how_to_retry(nan_demo):
    first = _build(nan_demo["spec"], nan_demo["out"])
    assert first.num_errors == 1 and "--retry-errors" in first.advice and first.complete
    again = _build(nan_demo["spec"], nan_demo["out"])
    assert again.shards_built == 0 and again.num_errors == 1
    assert again.advice.startswith("1 inputs were rejected") and again.advice.endswith("rerun with --retry-errors")
    retried = _build(nan_demo["spec"], nan_demo["out"], retry_errors=True)  # nothing fixed: same record
    assert retried.shards_built == 1 and retried.num_errors == 1 and "still rejected" in retried.advice
    assert_accounted(nan_demo["out"])


def test_a_fixed_input_is_retried_and_stored(nan_demo):
    _build(nan_demo["spec"], nan_demo["out"])
    (record,) = _errors(nan_demo["out"])
    assert record["unit"] == "lib:b_demo_1" and record["stage"] == "read"
    before = layout.shard_tar(nan_demo["out"], 0).read_bytes()
    write_libero_hdf5(nan_demo["data"] / "b.hdf5", episodes=2, steps=8, size=8, seed=2)  # the fix
    with pytest.raises(MotionDataError, match="lib:b_demo_1 .* it was rejected: if you fixed it, rerun with --retry"):
        _build(nan_demo["spec"], nan_demo["out"])
    result = _build(nan_demo["spec"], nan_demo["out"], retry_errors=True)
    assert (result.shards_built, result.num_errors, result.num_episodes) == (1, 0, 4) and result.advice is None
    assert layout.shard_tar(nan_demo["out"], 0).read_bytes() == before  # the shard without records is kept
    assert _errors(nan_demo["out"]) == []
    assert assert_accounted(nan_demo["out"])["stored"] == 4


def test_a_source_listed_empty_is_planned_again_on_rerun(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    spec = write_spec(tmp_path / "spec.yaml", [{"kind": "hdf5", "path": str(data), "name": "lib"}])
    first = _build(spec, tmp_path / "out")
    assert first.num_errors == 1 and first.problem and _errors(tmp_path / "out")[0]["stage"] == "plan"
    write_libero_hdf5(data / "a.hdf5", episodes=1, steps=8, size=8)
    second = _build(spec, tmp_path / "out", retry_errors=True)
    assert second.num_errors == 0 and second.num_episodes == 1 and second.problem is None
    assert_accounted(tmp_path / "out")


def test_verify_rebuilds_a_same_size_bit_flip(nan_demo):
    _build(nan_demo["spec"], nan_demo["out"])
    tar = layout.shard_tar(nan_demo["out"], 1)
    good = tar.read_bytes()
    flipped = bytearray(good)
    flipped[len(flipped) // 3] ^= 0x01
    tar.write_bytes(bytes(flipped))
    assert _build(nan_demo["spec"], nan_demo["out"]).shards_built == 0  # size matches: not seen without verify
    result = _build(nan_demo["spec"], nan_demo["out"], verify=True)
    assert result.shards_built == 1 and tar.read_bytes() == good
    assert_accounted(nan_demo["out"])
