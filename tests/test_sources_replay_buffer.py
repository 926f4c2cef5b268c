"""Diffusion Policy replay buffer (zarr v2 written through zarr 3) reader."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr

from motiondata.errors import SourceError, SpecError
from motiondata.sources import open_source
from motiondata.sources.replay_buffer import ReplayBufferSource
from tests.factories_sources import write_replay_buffer

LENGTHS = (5, 7, 8)


@pytest.fixture
def buffer(tmp_path):
    return write_replay_buffer(tmp_path / "pusht_replay.zarr", LENGTHS)


def test_units_follow_episode_ends(buffer):
    src = open_source("replay_buffer", str(buffer))
    units = src.units()
    json.dumps(units)
    assert [u["id"] for u in units] == ["episode_000000", "episode_000001", "episode_000002"]
    assert [(u["start"], u["stop"]) for u in units] == [(0, 5), (5, 12), (12, 20)]
    assert zarr.open_group(str(buffer), mode="r").metadata.zarr_format == 2


def test_read_slices_each_episode(buffer):
    src = ReplayBufferSource(str(buffer), language="push the T")
    root = zarr.open_group(str(buffer), mode="r")
    for unit in src.units():
        ep = src.read(unit)
        s, e = unit["start"], unit["stop"]
        np.testing.assert_array_equal(ep.rgb["img"], root["data/img"][s:e])
        np.testing.assert_array_equal(ep.actions, root["data/action"][s:e])
        np.testing.assert_array_equal(ep.state, root["data/state"][s:e])
        assert ep.length == e - s and ep.fps == 10.0 and ep.language == "push the T"
        assert ep.metadata["episode_index"] == unit["episode"]


def test_pusht_float_images_and_options(tmp_path):
    path = write_replay_buffer(tmp_path / "f.zarr", (4, 4), image_dtype="float32",
                               extra={"agent_pos": np.ones((8, 2), np.float32)})
    root = zarr.open_group(str(path), mode="r")
    src = ReplayBufferSource(str(path), state_key="agent_pos", fps=None)
    ep = src.read(src.units()[1])
    np.testing.assert_array_equal(ep.rgb["img"], root["data/img"][4:8].astype(np.uint8))
    assert ep.state.shape == (4, 2) and ep.fps == 10.0  # no data/timestamp: 10 Hz
    with pytest.raises(SourceError, match="state key data/qpos missing"):
        ReplayBufferSource(str(path), state_key="qpos").read(src.units()[0])
    with pytest.raises(SourceError, match=r"image keys \['camera_0'\] not in data/"):
        ReplayBufferSource(str(path), image_keys=["camera_0"]).read(src.units()[0])
    with pytest.raises(SpecError, match="fps"):
        ReplayBufferSource(str(path), fps=0)


def test_real_robot_keys_timestamp_fps_and_zip(tmp_path):
    n = 12
    rotvec = np.tile([0.0, 0.0, np.pi / 2], (n, 1))
    extra = {"camera_0": np.zeros((n, 6, 6, 3), np.uint8),
             "robot_eef_pose": np.hstack([np.ones((n, 3)), rotvec]).astype(np.float32),
             "robot_joint": np.zeros((n, 6), np.float32), "timestamp": np.arange(n) / 20.0}
    path = write_replay_buffer(tmp_path / "real.zarr.zip", (6, 6), extra=extra, zip_store=True)
    src = ReplayBufferSource(str(path), fps=None)
    ep = src.read(src.units()[1])
    assert ep.cameras == ["camera_0", "img"] and ep.joints.shape == (6, 6)
    assert ep.fps == pytest.approx(20.0)
    np.testing.assert_allclose(ep.ee_pose[0], [1, 1, 1, 0, 0, np.sin(np.pi / 4), np.cos(np.pi / 4)], atol=1e-6)
    assert ep.state.shape == (6, 5)  # "state" comes first in the discovery order


def test_bad_buffers_raise_source_error(tmp_path, buffer):
    nan_path = write_replay_buffer(tmp_path / "nan.zarr", LENGTHS)
    root = zarr.open_group(str(nan_path), mode="r+")
    root["data/action"][6, 1] = np.nan
    src = ReplayBufferSource(str(nan_path))
    units = src.units()
    assert src.read(units[0]).length == 5 and src.read(units[2]).length == 8
    with pytest.raises(SourceError, match="field 'actions': non-finite value at step 1, dim 1") as info:
        src.read(units[1])
    assert info.value.file == str(nan_path) and info.value.episode == "episode_000001"

    short = write_replay_buffer(tmp_path / "short.zarr", LENGTHS)
    root = zarr.open_group(str(short), mode="r+")
    root["meta/episode_ends"][2] = 25  # more rows than data/ holds
    src = ReplayBufferSource(str(short))
    assert src.read(src.units()[0]).length == 5
    with pytest.raises(SourceError, match="has 20 rows but meta/episode_ends needs 25"):
        src.read(src.units()[2])

    no_meta = tmp_path / "no_meta.zarr"
    shutil.copytree(buffer, no_meta)
    shutil.rmtree(no_meta / "meta")
    (unit,) = ReplayBufferSource(str(no_meta)).units()
    with pytest.raises(SourceError, match="meta/episode_ends is missing"):
        ReplayBufferSource(str(no_meta)).read(unit)

    junk = tmp_path / "junk.zarr"
    junk.mkdir()
    (unit,) = ReplayBufferSource(str(junk)).units()
    with pytest.raises(SourceError, match="cannot open as a zarr replay buffer"):
        ReplayBufferSource(str(junk)).read(unit)


def test_corrupt_chunk_names_key(tmp_path):
    path = write_replay_buffer(tmp_path / "c.zarr", LENGTHS)
    (path / "data" / "img" / "0.0.0.0").write_bytes(b"garbage")
    src = ReplayBufferSource(str(path))
    with pytest.raises(SourceError, match=r"cannot read data/img"):
        src.read(src.units()[0])


def test_empty_episode(tmp_path):
    path = write_replay_buffer(tmp_path / "e.zarr", (3, 0, 2))
    src = ReplayBufferSource(str(path))
    units = src.units()
    assert len(units) == 3 and src.read(units[2]).length == 2
    with pytest.raises(SourceError, match="episode 1 is empty"):
        src.read(units[1])
