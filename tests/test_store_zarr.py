import os

import numpy as np
import pytest
import zarr

from motiondata.errors import StoreError
from motiondata.store.episodes_zarr import (TIME_CHUNK, ensure_store, episode_attrs, list_episodes, read_episode,
                                            stack_windows, unpad_windows, write_episode)
from motiondata.store.layout import zarr_store


def episode_arrays(length: int = 40, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "rgb.agentview": rng.integers(0, 255, (length, 8, 8, 3), dtype=np.uint8),
        "depth.agentview": rng.random((length, 8, 8), dtype=np.float32),
        "actions": rng.normal(size=(length, 7)).astype(np.float32),
        "vae.latents": rng.normal(size=(4, 3, 2, 2)).astype(np.float16),
        "frame_count": np.array(length, dtype=np.int64),
    }


def window_fields() -> dict[str, list[np.ndarray]]:
    return {
        "fast.tokens": [np.arange(n, dtype=np.int32) + 1 for n in (3, 6, 4)],
        "keyframes.codes": [np.full((2, 3, 3), i, np.int32) for i in range(3)],
    }


ATTRS = {"source": "demo.hdf5", "fps": 20.0, "language": "open the drawer"}


def test_roundtrip_with_plain_zarr(tmp_path):
    arrays = episode_arrays()
    write_episode(tmp_path, "ep_0", arrays, ATTRS, window_fields())
    got = read_episode(tmp_path, "ep_0")
    for name, arr in arrays.items():
        assert got[name].dtype == arr.dtype
        np.testing.assert_array_equal(got[name], arr)
    root = zarr.open_group(str(zarr_store(tmp_path)), mode="r")
    node = root["ep_0/rgb/agentview"]  # dots become group levels
    np.testing.assert_array_equal(node[:], arrays["rgb.agentview"])
    assert node.chunks == (TIME_CHUNK, 8, 8, 3)
    assert "blosc" in str(node.metadata.to_dict()["codecs"])
    assert sorted(root["ep_0/rgb"].array_keys()) == ["agentview"]
    assert episode_attrs(tmp_path, "ep_0")["language"] == "open the drawer"


def test_windows_are_padded_with_shapes_and_unpad_back(tmp_path):
    write_episode(tmp_path, "ep_0", episode_arrays(), ATTRS, window_fields())
    got = read_episode(tmp_path, "ep_0", fields=["windows.fast.tokens", "windows.fast.tokens_shapes"])
    assert got["windows.fast.tokens"].shape == (3, 6)
    np.testing.assert_array_equal(got["windows.fast.tokens"][0], [1, 2, 3, 0, 0, 0])
    np.testing.assert_array_equal(got["windows.fast.tokens_shapes"], [[3], [6], [4]])
    lists = read_episode(tmp_path, "ep_0", fields=["windows.fast.tokens", "windows.keyframes.codes"], unpad=True)
    for got_w, want_w in zip(lists["windows.fast.tokens"], window_fields()["fast.tokens"]):
        np.testing.assert_array_equal(got_w, want_w)
    assert [w.shape for w in lists["windows.keyframes.codes"]] == [(2, 3, 3)] * 3
    meta = episode_attrs(tmp_path, "ep_0")["motiondata"]
    assert meta["num_windows"] == 3 and meta["window_fields"]["fast.tokens"]["shape"] == [3, 6]


def test_stack_windows_multi_axis_padding():
    values = [np.ones((2, 5), np.float16), np.ones((4, 1), np.float16)]
    stacked, shapes = stack_windows("motion.zm", values)
    assert stacked.shape == (2, 4, 5) and shapes.tolist() == [[2, 5], [4, 1]]
    assert [a.shape for a in unpad_windows(stacked, shapes)] == [(2, 5), (4, 1)]
    with pytest.raises(StoreError, match="dtype or rank"):
        stack_windows("x", [np.ones(2, np.int32), np.ones(2, np.int64)])


def test_time_slice(tmp_path):
    arrays = episode_arrays()
    write_episode(tmp_path, "ep_0", arrays, ATTRS)
    got = read_episode(tmp_path, "ep_0", fields=["actions", "frame_count"], start=5, stop=21)
    np.testing.assert_array_equal(got["actions"], arrays["actions"][5:21])
    assert got["frame_count"] == 40


def test_replace_and_no_leftovers(tmp_path):
    write_episode(tmp_path, "ep_0", episode_arrays(seed=0), ATTRS, window_fields())
    write_episode(tmp_path, "ep_0", {"actions": np.zeros((3, 2), np.float32)}, {"v": 2})
    assert list_episodes(tmp_path) == ["ep_0"]
    assert sorted(read_episode(tmp_path, "ep_0")) == ["actions"]
    assert episode_attrs(tmp_path, "ep_0")["v"] == 2
    assert sorted(os.listdir(zarr_store(tmp_path))) == ["ep_0", "zarr.json"]


def test_failed_write_keeps_old_episode_and_leaves_no_temp(tmp_path):
    write_episode(tmp_path, "ep_0", episode_arrays(), ATTRS)
    bad = {"fast.tokens": [np.ones(2, np.int32), np.ones(2, np.float32)]}
    with pytest.raises(StoreError, match="fast.tokens"):
        write_episode(tmp_path, "ep_0", {"actions": np.zeros((3, 2), np.float32)}, {}, bad)
    assert sorted(os.listdir(zarr_store(tmp_path))) == ["ep_0", "zarr.json"]
    assert read_episode(tmp_path, "ep_0")["actions"].shape == (40, 7)


def test_bytes_are_deterministic(tmp_path):
    for d in ("a", "b"):
        write_episode(tmp_path / d, "ep_0", episode_arrays(), ATTRS, window_fields())

    def files(root):
        base = zarr_store(root)
        return {os.path.relpath(os.path.join(dp, f), base): open(os.path.join(dp, f), "rb").read()
                for dp, _, fs in os.walk(base) for f in fs}

    assert files(tmp_path / "a") == files(tmp_path / "b")


def test_list_skips_hidden_and_reads_missing_fail(tmp_path):
    ensure_store(tmp_path)
    write_episode(tmp_path, "ep_1", {"actions": np.zeros((2, 2), np.float32)}, {})
    zarr.open_group(str(zarr_store(tmp_path) / ".ep_2.dead.tmp"), mode="w", zarr_format=3)
    assert list_episodes(tmp_path) == ["ep_1"]
    with pytest.raises(StoreError, match="ep_9"):
        read_episode(tmp_path, "ep_9")
    with pytest.raises(StoreError, match="no field"):
        read_episode(tmp_path, "ep_1", fields=["state"])


@pytest.mark.parametrize("eid, arrays, attrs, windows, match", [
    ("bad id", {}, {}, None, "store-safe"),
    ("e", {}, {"motiondata": 1}, None, "reserved"),
    ("e", {}, {"x": np.float32(1)}, None, "plain JSON"),
    ("e", {"rgb": np.zeros(2), "rgb.cam": np.zeros(2)}, {}, None, "collide"),
    ("e", {"windows.x": np.zeros(2)}, {}, None, "windows"),
    ("e", {"x": np.array([None], dtype=object)}, {}, None, "pickle"),
    ("e", {"__x": np.zeros(2)}, {}, None, "not storable"),
    ("e", {}, {}, {"a": [np.zeros(1)], "b": [np.zeros(1)] * 2}, "one value per window"),
])
def test_bad_episodes_are_refused(tmp_path, eid, arrays, attrs, windows, match):
    with pytest.raises(StoreError, match=match):
        write_episode(tmp_path, eid, arrays, attrs, windows)
    assert list_episodes(tmp_path) == []
