import json
import shutil
import tarfile

import numpy as np
import pytest

from motiondata.store.errors_log import error_record, read_errors, write_errors
from motiondata.store.layout import shard_manifest, shard_tar, stats_file, zarr_episode
from motiondata.store.manifest import write_shard_manifest
from motiondata.store.shards import write_shard
from motiondata.store.validate import validate_store

try:
    from tests.factories_store import build_store, episode_samples, shard_manifest_for
except ImportError:  # tests/ is not a package
    from factories_store import build_store, episode_samples, shard_manifest_for


@pytest.fixture(scope="module")
def clean_store(tmp_path_factory):
    out = tmp_path_factory.mktemp("store")
    build_store(out)
    return out


@pytest.fixture
def store(clean_store, tmp_path):
    out = tmp_path / "store"
    shutil.copytree(clean_store, out)
    return out


def offsets(path, prefix):
    with tarfile.open(path) as tar:
        return next((m.offset, m.offset_data) for m in tar.getmembers() if m.name.startswith(prefix))


def flip(path, at):
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_clean_store_has_no_problems(clean_store):
    assert validate_store(clean_store) == []
    assert validate_store(clean_store, deep=False) == []


def test_truncated_shard_is_named(store):
    tar = shard_tar(store, 1)
    tar.write_bytes(tar.read_bytes()[: offsets(tar, "ep_1_0_w0001.state")[1] + 10])
    problems = validate_store(store)
    assert any("shard-000001" in p and "key ep_1_0_w0001" in p for p in problems), problems
    assert not any("shard-000000" in p for p in problems)
    assert any("shard-000001" in p and "bytes" in p for p in validate_store(store, deep=False))


def test_flipped_payload_byte_names_shard_and_key(store):
    """A flip inside array data decodes fine; the per-sample digest still finds the sample."""
    tar = shard_tar(store, 0)
    flip(tar, offsets(tar, "ep_0_1_w0002.rgb.agentview")[1] + 200)
    problems = validate_store(store)
    assert any("shard shard-000000, key ep_0_1_w0002" in p and "differ" in p for p in problems), problems
    assert any("shard-000000" in p and "sha256" in p for p in problems)
    assert validate_store(store, deep=False) == []  # size unchanged: only a deep check can see it


def test_flipped_header_byte_is_named(store):
    tar = shard_tar(store, 0)
    flip(tar, offsets(tar, "ep_0_1_w0000.")[0] + 2)
    problems = validate_store(store)
    assert any(p.startswith("shard shard-000000") and "corrupt" in p for p in problems), problems


def test_missing_shard_manifest_and_stray_tar(store):
    shard_manifest(store, 1).unlink()
    shutil.copy(shard_tar(store, 0), shard_tar(store, 7))
    problems = validate_store(store)
    assert any("shard-000001" in p and "manifest" in p and "missing" in p for p in problems)
    assert any("shard-000007" in p and "not listed" in p for p in problems)


def test_sample_schema_violation_names_key(store):
    samples = episode_samples("ep_0_0", 3)
    for s in samples:
        s["rgb.agentview"] = s["rgb.agentview"].astype(np.float32)
    samples[2]["meta"]["window"] = -1
    info = write_shard(shard_tar(store, 0), samples, check_samples=False)  # as an older/foreign writer would
    doc = shard_manifest_for(0, info, samples)
    doc["samples"][2]["window"] = 0  # the manifest itself must stay valid
    write_shard_manifest(store, 0, doc)
    problems = validate_store(store)
    assert any("key ep_0_0_w0001" in p and "rgb.agentview" in p and "uint8" in p for p in problems), problems
    assert any("key ep_0_0_w0002" in p and "window" in p for p in problems), problems
    assert any("manifest.json lists" in p for p in problems)  # job manifest's sha256 no longer matches


def test_broken_manifest_json_stats_zarr_and_errors(store):
    (store / "manifest.json").write_text("{not json")
    stats_file(store).write_text(json.dumps({"norm_stats": {"actions": {"mean": [0.0]}}}))
    shutil.rmtree(zarr_episode(store, "ep_1_1"))
    write_errors(store, read_errors(store) + [error_record("x.mp4", None, "decode", "no video stream")])
    problems = validate_store(store)
    assert any(p.startswith("manifest.json") and "not valid JSON" in p for p in problems)
    assert any(p.startswith("stats.json") and "q01" in p for p in problems)
    assert any("episodes.zarr" in p and "ep_1_1" in p for p in problems)
    # without a job manifest the shards on disk are still checked
    assert not any("shard-00000" in p for p in problems)


def test_num_errors_must_match(store):
    write_errors(store, read_errors(store) + [error_record("x.mp4", None, "decode", "no video stream")])
    assert any("num_errors" in p for p in validate_store(store))


def test_missing_everything(tmp_path):
    problems = validate_store(tmp_path)
    assert any(p.startswith("manifest.json") for p in problems)
    assert any(p.startswith("stats.json") for p in problems)
