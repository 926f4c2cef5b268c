"""`motiondata validate` catches what it promises (issue 9, item 8): each test damages a tiny real store
the way a crash, a stale rerun, a flipped bit or an attacker would, and checks the problem is named."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import tarfile
import tracemalloc

import numpy as np
import pytest

from motiondata.store.episodes_zarr import write_episode, zarr_episode
from motiondata.store.layout import job_manifest, shard_manifest, shard_stats, shard_tar, stats_file
from motiondata.store.shards import file_sha256, sample_digest
from motiondata.store.stats import RunningStats, read_partial_stats, write_stats
from motiondata.store.validate import shard_intact, validate_store, validate_store_report
from tests.factories_store import build_store


@pytest.fixture(scope="module")
def clean_store(tmp_path_factory):
    out = tmp_path_factory.mktemp("store")
    build_store(out)  # 2 shards x 2 episodes x 3 windows
    return out


@pytest.fixture
def store(clean_store, tmp_path):
    out = tmp_path / "store"
    shutil.copytree(clean_store, out)
    return out


def edit_json(path, change):
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def tar_members(path) -> list[tuple[str, bytes]]:
    with tarfile.open(path, "r:") as tf:
        return [(m.name, tf.extractfile(m).read()) for m in tf]


def write_tar(path, members) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def rewrite_shard(out, index, members) -> None:
    """Write ``members`` as shard ``index`` and make both manifests agree with it (sha256, sizes), as an
    attacker or a foreign writer would: only validate's own checks of the content can catch it."""
    path = shard_tar(out, index)
    write_tar(path, members)
    grouped: dict[str, list] = {}
    for name, data in members:
        grouped.setdefault(name.partition(".")[0], []).append((name, data))

    def fix(doc):
        doc.update(sha256=file_sha256(path), bytes=path.stat().st_size)
        for s in doc["samples"]:
            s.update(sha256=sample_digest(grouped[s["key"]]), bytes=sum(len(d) for _, d in grouped[s["key"]]))

    edit_json(shard_manifest(out, index), fix)
    edit_json(job_manifest(out), lambda job: job["shards"][index].update(sha256=file_sha256(path)))


def npy_bytes(header: str, payload: bytes = b"") -> bytes:
    text = header.encode("latin1")
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + payload


BAD_HEADERS = {
    "not_a_dict": "[1, 2, 3]\n",
    "string_shape": "{'descr': '<f4', 'fortran_order': False, 'shape': 'abc'}\n",
    "deep_nesting": "{'descr': '<f4', 'fortran_order': False, 'shape': " + "(" * 3000 + ")" * 3000 + "}\n",
    "no_descr": "{'fortran_order': False, 'shape': (2,)}\n",
    "declares_5_tib": "{'descr': '|u1', 'fortran_order': False, 'shape': (1099511627776, 5)}\n",
}


def test_clean_store_passes_and_reports_counts(clean_store):
    report = validate_store_report(clean_store)
    assert report["ok"] and report["problems"] == [] and report["skipped"] == []
    assert report["checked"]["shards"] == 2 and report["checked"]["samples"] == 12
    assert report["checked"]["chunks"] > 0 and report["checked"]["bytes_hashed"] > 0


def test_quick_mode_says_what_it_skipped(clean_store):
    report = validate_store_report(clean_store, deep=False)
    assert report["ok"] and not report["deep"]
    skipped = " | ".join(report["skipped"])
    assert "sha256 of 2 shard tars" in skipped and "decoding 12 samples" in skipped and "chunks" in skipped
    assert report["checked"]["bytes_hashed"] == 0 and report["checked"]["samples"] == 0
    json.dumps(report)  # the CLI prints it with --json


def test_incomplete_job_names_the_failed_shards(store):
    edit_json(job_manifest(store), lambda job: job.update(
        complete=False, failed_shards=[{"shard": "shard-000002", "reason": "worker killed 3 times"}]))
    problems = validate_store(store, deep=False)
    assert any("complete: false" in p and "shard-000002 (worker killed 3 times)" in p and "rerun" in p
               for p in problems), problems


def test_orphan_zarr_group_is_refused(store):
    write_episode(store, "ep_orphan", {"actions": np.zeros((4, 7), np.float32)}, {"source": "x.hdf5", "fps": 10.0})
    problems = validate_store(store, deep=False)
    assert any(p.startswith("episodes.zarr/ep_orphan: orphan group") and "delete" in p for p in problems), problems


def test_duplicate_keys_and_episodes_across_shards(store):
    """A stale rerun stored shard 0's inputs again as shard 2: the same keys and episodes twice."""
    for suffix in (".tar", ".json", ".stats.bin"):
        shutil.copy(store / "shards" / f"shard-000000{suffix}", store / "shards" / f"shard-000002{suffix}")
    edit_json(shard_manifest(store, 2), lambda m: m.update(shard="shard-000002", index=2,
                                                            tar="shards/shard-000002.tar"))

    def add(job):
        entry = dict(job["shards"][0], shard="shard-000002", tar="shards/shard-000002.tar")
        job["shards"].append(entry)
        job["num_samples"] += entry["num_samples"]
    edit_json(job_manifest(store), add)
    problems = validate_store(store)
    assert any(p.startswith("shard shard-000002, key ep_0_0_w0000: also stored in shard-000000") for p in problems)
    assert any(p.startswith("shard shard-000002, episode ep_0_1: also stored in shard-000000") for p in problems)
    assert any("stats.json" in p and "does not match" in p for p in problems), problems


@pytest.mark.parametrize("tar", ["/etc/passwd", "../elsewhere/shard-000001.tar", "s3://bucket/shard.tar",
                                 "shards/shard-000000.tar"])
def test_shard_paths_outside_the_store_are_refused(store, tar):
    edit_json(job_manifest(store), lambda job: job["shards"][1].update(tar=tar))
    problems = validate_store(store, deep=False)
    want = "is not the shard's own file" if tar.startswith("shards/") else "outside the store"
    assert any(p.startswith("manifest.json: shard shard-000001") and want in p for p in problems), problems


def test_stale_stats_are_caught_by_content(store):
    old = read_partial_stats(store, 0)  # the stats of shard 0 only, as an interrupted finalize left them
    write_stats(store, old)
    past = stats_file(store).stat().st_mtime - 3600
    os.utime(stats_file(store), (past, past))
    problems = validate_store(store, deep=False)
    assert any(p.startswith("stats.json: does not match the merge") and "older than shard-" in p
               for p in problems), problems
    write_stats(store, RunningStats())  # right format, wrong content: mtime is new, still caught
    assert any("actions" in p and "only in the shard partials" in p for p in validate_store(store, deep=False))


def test_missing_partial_stats_are_named(store):
    shard_stats(store, 1).unlink()
    assert any("shard shard-000001: partial stats" in p and "missing" in p for p in validate_store(store, deep=False))


def test_new_stores_checksum_zarr_chunks(clean_store):
    meta = json.loads((zarr_episode(clean_store, "ep_0_0") / "actions" / "zarr.json").read_text())
    assert [c["name"] for c in meta["codecs"]][-1] == "crc32c"


def test_flipped_zarr_chunk_byte_is_detected_in_deep_mode(store):
    chunk = zarr_episode(store, "ep_1_0") / "actions" / "c" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit; the size does not change
    chunk.write_bytes(bytes(data))
    problems = validate_store(store)
    assert any(p.startswith("episodes.zarr/ep_1_0: array actions chunk 0/0") and "checksum" in p
               for p in problems), problems
    report = validate_store_report(store, deep=False)
    assert report["ok"] and any("chunks" in s for s in report["skipped"])


def test_deleted_zarr_chunk_is_detected_not_served_as_zeros(store):
    chunk = zarr_episode(store, "ep_1_0") / "actions" / "c" / "0" / "0"
    chunk.unlink()  # zarr alone would read the fill value (zeros) here
    problems = validate_store(store)
    assert any(p.startswith("episodes.zarr/ep_1_0: array actions") and "missing" in p for p in problems), problems


@pytest.mark.parametrize("kind", sorted(BAD_HEADERS))
def test_malformed_npy_header_is_named_without_allocating(store, kind):
    members = tar_members(shard_tar(store, 0))
    target = next(i for i, (name, _) in enumerate(members) if name == "ep_0_1_w0001.actions.npy")
    members[target] = (members[target][0], npy_bytes(BAD_HEADERS[kind], b"\0" * 64))
    rewrite_shard(store, 0, members)
    tracemalloc.start()
    try:
        problems = validate_store(store)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200 << 20  # never allocates from a declared shape
    hits = [p for p in problems if p.startswith("shard shard-000000, key ep_0_1_w0001") and "malformed .npy" in p]
    assert hits, problems
    if kind == "declares_5_tib":
        assert "5497558138880 bytes, the member holds 64" in hits[0]


def test_same_size_flip_fails_shard_intact_and_deep_validate(store):
    assert shard_intact(store, 0) and shard_intact(store, 1)
    tar = shard_tar(store, 1)
    data = bytearray(tar.read_bytes())
    data[len(data) // 3] ^= 0x10
    tar.write_bytes(bytes(data))
    assert not shard_intact(store, 1) and shard_intact(store, 0)
    assert any(p.startswith("shard shard-000001") and "sha256" in p for p in validate_store(store))
    shard_manifest(store, 0).unlink()
    assert not shard_intact(store, 0)


def test_gzip_shard_named_tar_is_refused(store):
    tar = shard_tar(store, 1)
    tar.write_bytes(gzip.compress(tar.read_bytes()))
    problems = validate_store(store)
    assert any(p.startswith("shard shard-000001") and "gzip-compressed" in p for p in problems), problems


@pytest.mark.parametrize("name", ["../ep_1_0_w0000.meta.json", "/tmp/ep_1_0_w0000.meta.json",
                                  "sub/ep_1_0_w0000.meta.json"])
def test_member_names_that_escape_are_refused(store, name):
    members = tar_members(shard_tar(store, 1))
    members.insert(1, (name, b"{}"))
    rewrite_shard(store, 1, members)
    problems = validate_store(store)
    assert any(p.startswith("shard shard-000001") and any(w in p for w in ("absolute path", "'..'", "'/'"))
               for p in problems), problems


def test_tar_member_declaring_more_than_the_file_is_refused(store):
    tar = shard_tar(store, 1)
    with tarfile.open(tar, "r:") as tf:
        last = tf.getmembers()[-1]
    data = bytearray(tar.read_bytes()[: last.offset_data + last.size])  # cut the end, then lie about the size
    header = bytearray(data[last.offset: last.offset + 512])
    header[124:136] = b"%011o\0" % (2 ** 33 - 1)
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    data[last.offset: last.offset + 512] = header
    tar.write_bytes(bytes(data))
    tracemalloc.start()
    try:
        problems = validate_store(store)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200 << 20
    assert any(p.startswith("shard shard-000001") and "past the end of the file" in p for p in problems), problems
