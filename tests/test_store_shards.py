import io
import json
import os
import tarfile

import numpy as np
import pytest
import webdataset as wds

from motiondata.errors import StoreError
from motiondata.store.shards import file_sha256, iter_shard, merge_field_info, write_shard

try:
    from tests.factories_store import episode_samples, make_sample
except ImportError:  # tests/ is not a package
    from factories_store import episode_samples, make_sample


def assert_same_sample(a, b):
    assert a.keys() == b.keys()
    for name in a:
        if isinstance(a[name], np.ndarray):
            assert b[name].dtype == a[name].dtype, name
            np.testing.assert_array_equal(b[name], a[name])
        else:
            assert b[name] == a[name], name


@pytest.fixture
def samples():
    return episode_samples("ep_a", 3) + episode_samples("ep_b", 2, seed=1)


def test_roundtrip_keeps_order_values_and_dtypes(tmp_path, samples):
    path = tmp_path / "shard-000000.tar"
    info = write_shard(path, iter(samples))  # a generator: streaming input
    assert info["num_samples"] == len(samples)
    assert [s["key"] for s in info["samples"]] == [s["__key__"] for s in samples]
    assert info["samples"][0]["fields"]["actions"] == {"dtype": "float32", "shape": [4, 7]}
    assert info["samples"][0]["fields"]["meta"] == {"json": True}
    back = list(iter_shard(path))
    assert len(back) == len(samples)
    for a, b in zip(samples, back):
        assert_same_sample(a, b)


def test_bytes_are_deterministic_and_reported(tmp_path, samples):
    a = write_shard(tmp_path / "a" / "shard-000000.tar", samples)
    b = write_shard(tmp_path / "b" / "shard-000000.tar", samples)
    data_a = (tmp_path / "a" / "shard-000000.tar").read_bytes()
    assert data_a == (tmp_path / "b" / "shard-000000.tar").read_bytes()
    assert a == b
    assert a["bytes"] == len(data_a)
    assert a["sha256"] == file_sha256(tmp_path / "a" / "shard-000000.tar")
    with tarfile.open(tmp_path / "a" / "shard-000000.tar") as tar:
        for m in tar.getmembers():
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o644)


def test_members_of_a_sample_are_adjacent_and_named_for_webdataset(tmp_path, samples):
    path = tmp_path / "shard-000000.tar"
    write_shard(path, samples)
    with tarfile.open(path) as tar:
        names = tar.getnames()
    keys = [n.split(".", 1)[0] for n in names]
    assert keys == sorted(keys, key=lambda k: [s["__key__"] for s in samples].index(k))
    assert "ep_a_w0000.rgb.agentview.npy" in names


def test_plain_webdataset_reads_the_shard(tmp_path, samples):
    path = tmp_path / "shard-000000.tar"
    write_shard(path, samples)
    got = list(wds.WebDataset(str(path), shardshuffle=False))
    assert [g["__key__"] for g in got] == [s["__key__"] for s in samples]
    for g, s in zip(got, samples):
        np.testing.assert_array_equal(np.load(io.BytesIO(g["rgb.agentview.npy"]), allow_pickle=False), s["rgb.agentview"])
        np.testing.assert_array_equal(np.load(io.BytesIO(g["fast.tokens.npy"]), allow_pickle=False), s["fast.tokens"])
        assert json.loads(g["meta.json"]) == s["meta"]


def test_fields_filter_decodes_only_those(tmp_path, samples):
    path = tmp_path / "shard-000000.tar"
    write_shard(path, samples)
    got = list(iter_shard(path, fields=["actions", "meta"]))
    assert [sorted(g) for g in got] == [["__key__", "actions", "meta"]] * len(samples)
    assert len(list(iter_shard(path, fields=["nothing"]))) == len(samples)


def test_failed_write_leaves_nothing(tmp_path, samples):
    path = tmp_path / "shard-000000.tar"

    def broken():
        yield samples[0]
        raise RuntimeError("encoder crashed")

    with pytest.raises(RuntimeError):
        write_shard(path, broken())
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("bad, match", [
    ([make_sample("e", 0), make_sample("e", 0)], "duplicate key"),
    ([{"__key__": "a.b", "x": np.zeros(2)}], "must not contain"),
    ([{"__key__": "a", "x": np.array([{}], dtype=object)}], "pickle"),
    ([{"__key__": "a"}], "no fields"),
    ([{"x": np.zeros(2)}], "__key__"),
])
def test_bad_samples_are_refused(tmp_path, bad, match):
    with pytest.raises(StoreError, match=match):
        write_shard(tmp_path / "shard-000000.tar", bad)
    assert not (tmp_path / "shard-000000.tar").exists()


def member_offsets(path):
    with tarfile.open(path) as tar:
        return [(m.name, m.offset, m.offset_data) for m in tar.getmembers()]


def test_truncated_mid_member_names_shard_and_key(tmp_path, samples):
    path = tmp_path / "shard-000003.tar"
    write_shard(path, samples)
    name, _, data_at = [m for m in member_offsets(path) if m[0].startswith("ep_a_w0002.rgb")][0]
    path.write_bytes(path.read_bytes()[: data_at + 100])
    with pytest.raises(StoreError) as err:
        list(iter_shard(path))
    assert err.value.shard == "shard-000003" and err.value.key == "ep_a_w0002"


def test_truncated_between_members_is_detected(tmp_path, samples):
    """tarfile alone reads this as a shorter, valid archive."""
    path = tmp_path / "shard-000000.tar"
    write_shard(path, samples)
    header_at = [m for m in member_offsets(path) if m[0].startswith("ep_b_w0000.")][0][1]
    path.write_bytes(path.read_bytes()[:header_at])
    with pytest.raises(StoreError, match="truncated") as err:
        list(iter_shard(path))
    assert err.value.key == "ep_a_w0002"


def test_flipped_header_byte_is_detected(tmp_path, samples):
    """A bad header checksum makes tarfile stop silently; iter_shard must not."""
    path = tmp_path / "shard-000000.tar"
    write_shard(path, samples)
    header_at = [m for m in member_offsets(path) if m[0].startswith("ep_b_w0000.")][0][1]
    data = bytearray(path.read_bytes())
    data[header_at + 3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="corrupt") as err:
        list(iter_shard(path))
    assert err.value.shard == "shard-000000"


def test_flipped_npy_header_names_the_key(tmp_path, samples):
    path = tmp_path / "shard-000000.tar"
    write_shard(path, samples)
    _, _, data_at = [m for m in member_offsets(path) if m[0] == "ep_a_w0001.actions.npy"][0]
    data = bytearray(path.read_bytes())
    data[data_at + 1] ^= 0xFF  # npy magic
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError) as err:
        list(iter_shard(path))
    assert err.value.key == "ep_a_w0001" and "actions" in str(err.value)


def test_non_adjacent_members_are_refused(tmp_path):
    path = tmp_path / "shard-000000.tar"
    with tarfile.open(path, "w") as tar:
        for name in ("a.x.json", "b.x.json", "a.y.json"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"1"))
    with pytest.raises(StoreError, match="adjacent") as err:
        list(iter_shard(path))
    assert err.value.key == "a"


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        list(iter_shard(tmp_path / "shard-000009.tar"))
    (tmp_path / "shard-000001.tar").write_bytes(b"")
    with pytest.raises(StoreError, match="shard-000001"):
        list(iter_shard(tmp_path / "shard-000001.tar"))


def test_empty_shard_is_valid(tmp_path):
    info = write_shard(tmp_path / "shard-000000.tar", [])
    assert info["num_samples"] == 0 and info["fields"] == {}
    assert list(iter_shard(tmp_path / "shard-000000.tar")) == []


def test_field_summary_marks_varying_axes():
    summary = {}
    merge_field_info(summary, {"t": {"dtype": "int32", "shape": [3]}, "m": {"json": True}})
    merge_field_info(summary, {"t": {"dtype": "int32", "shape": [5]}, "m": {"json": True}})
    assert summary == {"t": {"dtype": "int32", "shape": [None]}, "m": {"json": True}}
    with pytest.raises(StoreError, match="changes type"):
        merge_field_info(summary, {"t": {"dtype": "int64", "shape": [5]}})
    with pytest.raises(StoreError, match="rank"):
        merge_field_info(summary, {"t": {"dtype": "int32", "shape": [5, 1]}})


def test_samples_breaking_the_field_contract_are_refused(tmp_path):
    sample = make_sample("ep", 2)
    sample["fast.tokens"] = sample["fast.tokens"].astype(np.int64)
    with pytest.raises(StoreError, match="fast.tokens") as err:
        write_shard(tmp_path / "shard-000000.tar", [make_sample("ep", 1), sample])
    assert err.value.key == "ep_w0002"
    del sample["meta"]
    with pytest.raises(StoreError, match="meta"):
        write_shard(tmp_path / "shard-000000.tar", [sample])
    assert write_shard(tmp_path / "shard-000000.tar", [sample], check_samples=False)["num_samples"] == 1


def test_long_member_names_roundtrip(tmp_path):
    sample = {"__key__": "k" * 120, "meta": {"episode": "e", "window": 0, "start": 0, "length": 1},
              "rgb." + "c" * 90: np.zeros((1, 2, 2, 3), np.uint8)}
    path = tmp_path / "shard-000000.tar"
    info = write_shard(path, [sample])
    assert write_shard(tmp_path / "again.tar", [sample])["sha256"] == info["sha256"]
    (back,) = iter_shard(path)
    assert_same_sample(sample, back)
