"""The streaming loader never stops training on bad data and never decompresses (issue 9, item 9).

Each test crafts a hostile or damaged shard with ``tarfile`` directly inside a tiny real store and
checks: under ``on_corrupt="skip"`` the epoch completes with equal batch counts (in every worker), and
under ``"raise"`` a ``StoreError`` names the shard and the key."""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import shutil
import tarfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from motiondata.errors import StoreError
from motiondata.loader.streaming import StreamingLoader
from motiondata.store import layout
from tests.factories_loader import make_store, store_keys

FIELDS = ["actions", "fast.tokens", "meta"]
BAD_HEADERS = {
    "not_a_dict": "[1, 2, 3]\n",
    "string_shape": "{'descr': '<f4', 'fortran_order': False, 'shape': 'abc'}\n",
    "deep_nesting": "{'descr': '<f4', 'fortran_order': False, 'shape': " + "(" * 3000 + ")" * 3000 + "}\n",
    "no_descr": "{'fortran_order': False, 'shape': (8, 7)}\n",
    "huge_shape": "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 7)}\n",
    "python_call": "__import__('os').system('echo pwned')\n",
}


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("store"), fields=FIELDS)  # 12 samples, 3 shards of 4


@pytest.fixture
def store(clean, tmp_path) -> Path:
    out = tmp_path / "store"
    shutil.copytree(clean, out)
    return out


def members_of(path) -> list[tuple[str, bytes]]:
    with tarfile.open(path, "r:") as tf:
        return [(m.name, tf.extractfile(m).read()) for m in tf]


def write_tar(path, members) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def replace_member(out, index, name, data) -> None:
    path = layout.shard_tar(out, index)
    write_tar(path, [(n, data if n == name else d) for n, d in members_of(path)])


def npy_bytes(header: str, payload: bytes = b"\0" * 224) -> bytes:
    text = header.encode("latin1")
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + payload


def epoch(source, on_corrupt="skip", workers=0, batch=2) -> list[list[str]]:
    loader = StreamingLoader(source, batch, FIELDS, shuffle=False, on_corrupt=on_corrupt, num_workers=workers)
    return [b["__key__"] for b in loader]


def flat(batches) -> list[str]:
    return [k for b in batches for k in b]


@pytest.mark.parametrize("kind", sorted(BAD_HEADERS))
def test_malformed_npy_header_is_skipped_or_named(store, kind, caplog):
    replace_member(store, 1, "ep001_w0001.actions.npy", npy_bytes(BAD_HEADERS[kind]))
    tracemalloc.start()
    try:
        with caplog.at_level(logging.WARNING, logger="motiondata.loader.shard_reader"):
            batches = epoch(store)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200 << 20  # nothing allocated from a declared shape
    assert len(batches) == 6 and "ep001_w0001" not in flat(batches)
    assert "shard-000001" in caplog.text and "ep001_w0001" in caplog.text and "malformed .npy" in caplog.text
    with pytest.raises(StoreError, match="malformed .npy") as info:
        epoch(store, on_corrupt="raise")
    assert (info.value.shard, info.value.key) == ("shard-000001", "ep001_w0001")


@pytest.mark.slow
def test_every_worker_skips_bad_headers(store):
    replace_member(store, 0, "ep000_w0001.actions.npy", npy_bytes(BAD_HEADERS["not_a_dict"]))
    replace_member(store, 2, "ep002_w0002.fast.tokens.npy", npy_bytes(BAD_HEADERS["deep_nesting"]))
    batches = epoch(store, workers=2)
    assert len(batches) == 6
    assert not {"ep000_w0001", "ep002_w0002"} & set(flat(batches))
    with pytest.raises(StoreError, match="malformed .npy"):
        epoch(store, on_corrupt="raise", workers=2)


def test_gzip_file_named_tar_is_refused(store, caplog):
    tar = layout.shard_tar(store, 2)
    tar.write_bytes(gzip.compress(tar.read_bytes()))
    with caplog.at_level(logging.WARNING, logger="motiondata.loader.shard_reader"):
        batches = epoch(store)
    assert len(batches) >= 4 and not any(k.startswith("ep002") for k in flat(batches))  # the epoch completes
    assert "gzip-compressed, not a plain tar" in caplog.text
    with pytest.raises(StoreError, match="gzip-compressed, not a plain tar") as info:
        epoch(store, on_corrupt="raise")
    assert info.value.shard == "shard-000002"
    layout.shard_manifest(store, 2).unlink()  # no sidecar: counting its samples must refuse it too
    with pytest.raises(StoreError, match="gzip-compressed"):
        StreamingLoader([str(tar)], 2, FIELDS)


@pytest.mark.parametrize("name", ["../ep001_w0002.actions.npy", "/tmp/ep001_w0002.actions.npy",
                                  "sub/ep001_w0002.actions.npy", "ep001_w0002.actions.npy/../../x.npy"])
def test_member_names_that_escape_are_refused(store, name, caplog):
    path = layout.shard_tar(store, 1)
    members = members_of(path)
    write_tar(path, [(name if n == "ep001_w0002.actions.npy" else n, d) for n, d in members])
    with caplog.at_level(logging.WARNING, logger="motiondata.loader.shard_reader"):
        batches = epoch(store)
    assert len(batches) == 6 and set(flat(batches)) < set(store_keys(store))
    assert "refused" in caplog.text and "shard-000001" in caplog.text
    with pytest.raises(StoreError, match="refused") as info:
        epoch(store, on_corrupt="raise")
    assert info.value.shard == "shard-000001"


@pytest.mark.parametrize("tar", ["/etc/passwd", "../outside/shard-000001.tar", "shards/../../outside.tar",
                                 "memory://elsewhere/shard.tar", "link/shard-000001.tar"])
def test_manifest_tar_paths_outside_the_store_are_refused(store, tmp_path, tar):
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(layout.shard_tar(store, 1), outside / "shard-000001.tar")
    os.symlink(outside, store / "link")
    job = json.loads(layout.job_manifest(store).read_text())
    job["shards"][1]["tar"] = tar
    layout.job_manifest(store).write_text(json.dumps(job))
    with pytest.raises(StoreError, match="outside the store") as info:
        StreamingLoader(store, 2, FIELDS)
    assert info.value.shard == "shard-000001"
    explicit = [str(layout.shard_tar(store, 0)), str(outside / "shard-000001.tar")]  # given by the user: fine
    assert len(epoch(explicit)) == 4


def test_member_declaring_more_than_the_file_is_skipped_without_allocating(store, caplog):
    path = layout.shard_tar(store, 1)
    with tarfile.open(path, "r:") as tf:
        last = tf.getmembers()[-1]
    data = bytearray(path.read_bytes()[: last.offset_data + last.size])
    header = bytearray(data[last.offset: last.offset + 512])
    header[124:136] = b"%011o\0" % (2 ** 33 - 1)  # 8 GiB declared in a few-KiB file
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    data[last.offset: last.offset + 512] = header
    path.write_bytes(bytes(data))
    tracemalloc.start()
    try:
        with caplog.at_level(logging.WARNING, logger="motiondata.loader.shard_reader"):
            batches = epoch(store)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200 << 20 and len(batches) == 6
    assert "shard-000001" in caplog.text
    with pytest.raises(StoreError, match="shard-000001"):
        epoch(store, on_corrupt="raise")


def test_sample_whose_arrays_disagree_with_the_batch_is_stood_in_for(store, caplog):
    buf = io.BytesIO()
    np.save(buf, np.zeros((8, 5), np.float64))  # a valid .npy, but not the store's (8, 7) float32 actions
    replace_member(store, 0, "ep000_w0001.actions.npy", buf.getvalue())
    with caplog.at_level(logging.WARNING, logger="motiondata.loader.streaming"):
        batches = epoch(store, batch=4)
    assert len(batches) == 3 and "ep000_w0001" in caplog.text
    with pytest.raises(StoreError, match="actions"):
        epoch(store, on_corrupt="raise", batch=4)


@pytest.mark.parametrize("count", [-1, "4", True, None])
def test_a_malformed_sample_count_is_refused(store, count):
    job = json.loads(layout.job_manifest(store).read_text())
    job["shards"][0]["num_samples"] = count
    layout.job_manifest(store).write_text(json.dumps(job))
    with pytest.raises(StoreError, match="not an int >= 0") as info:
        StreamingLoader(store, 2, FIELDS)
    assert info.value.shard == "shard-000000"


def test_a_lying_sample_count_cannot_size_the_plan(store, caplog):
    """A manifest claiming 10^12 samples must not size the epoch plan (it allocates per sample)."""
    job = json.loads(layout.job_manifest(store).read_text())
    job["shards"][0]["num_samples"] = 10 ** 12
    layout.job_manifest(store).write_text(json.dumps(job))
    with caplog.at_level(logging.WARNING, logger="motiondata.loader.shard_reader"):
        loader = StreamingLoader(store, 2, FIELDS, shuffle=False)
        assert len(loader) < 100 and "planning with" in caplog.text
        batches = [b["__key__"] for b in loader]
    assert len(batches) == len(loader) and set(flat(batches)) <= set(store_keys(store))
    with pytest.raises(StoreError, match="shard-000000"):
        epoch(store, on_corrupt="raise")
