"""LIBERO / robomimic HDF5 reader, and open_source()."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from motiondata.errors import SourceError, SpecError
from motiondata.sources import SOURCE_KINDS, open_source, source_options
from motiondata.sources.base import Source, axis_angle_to_quat, euler_xyz_to_quat, unique_ids
from motiondata.sources.hdf5_demos import Hdf5DemoSource, language_from_filename
from tests.factories_sources import (LIBERO_INSTRUCTION, quat2axisangle, random_quats, truncate_copy,
                                     write_libero_hdf5, write_robomimic_hdf5)

LIBERO_NAME = "KITCHEN_SCENE3_turn_on_the_stove_and_put_the_moka_pot_on_it_demo.hdf5"


@pytest.fixture
def libero(tmp_path):
    return write_libero_hdf5(tmp_path / LIBERO_NAME, demos=3, depth=True)


def same_rotation(a: np.ndarray, b: np.ndarray, atol: float = 1e-5) -> bool:
    return bool(np.all(np.abs(np.abs(np.sum(a * b, axis=-1)) - 1) < atol))


def test_libero_units_sorted_numerically(tmp_path):
    path = write_libero_hdf5(tmp_path / "x.hdf5", demos=12, steps=2, size=4)
    src = open_source("hdf5", str(path))
    assert isinstance(src, Source) and src.kind == "hdf5"
    units = src.units()
    assert [u["demo"] for u in units] == [f"demo_{i}" for i in range(12)]
    assert [u["id"] for u in units][:3] == ["demo_0", "demo_1", "demo_2"]
    assert all(u["file"] == str(path) for u in units)
    json.dumps(units)


def test_libero_read_fields(libero):
    src = Hdf5DemoSource(str(libero))
    ep = src.read(src.units()[1])
    with h5py.File(libero) as f:
        g = f["data/demo_1"]
        np.testing.assert_array_equal(ep.rgb["agentview"], g["obs/agentview_rgb"][()])
        np.testing.assert_array_equal(ep.rgb["eye_in_hand"], g["obs/eye_in_hand_rgb"][()])
        np.testing.assert_allclose(ep.actions, g["actions"][()].astype(np.float32))
        state = np.hstack([g["obs/joint_states"][()], g["obs/gripper_states"][()]])
        np.testing.assert_allclose(ep.state, state.astype(np.float32), rtol=1e-6)
        np.testing.assert_allclose(ep.joints, g["obs/joint_states"][()].astype(np.float32))
        np.testing.assert_allclose(ep.gripper, g["obs/gripper_states"][()].astype(np.float32))
        np.testing.assert_allclose(ep.ee_pose[:, :3], g["obs/ee_pos"][()].astype(np.float32))
        np.testing.assert_allclose(ep.depth["agentview"], g["obs/agentview_depth"][()][..., 0])
    assert ep.cameras == ["agentview", "eye_in_hand"] and ep.length == 7
    assert ep.fps == 20.0 and ep.language == LIBERO_INSTRUCTION
    assert ep.metadata["format"] == "libero" and ep.metadata["demo"] == "demo_1"
    assert ep.ee_pose.shape == (7, 7) and ep.ee_pose.dtype == np.float32
    # ee_ori is robosuite's axis-angle of random quaternions: the reader gives them back (xyzw)
    assert same_rotation(ep.ee_pose[:, 3:], random_quats(7, seed=1))


def test_flip_rotates_images_180(libero):
    plain, flipped = Hdf5DemoSource(str(libero)), Hdf5DemoSource(str(libero), flip=True)
    unit = plain.units()[0]
    a, b = plain.read(unit), flipped.read(unit)
    np.testing.assert_array_equal(b.rgb["agentview"], a.rgb["agentview"][:, ::-1, ::-1])
    np.testing.assert_array_equal(b.depth["agentview"], a.depth["agentview"][:, ::-1, ::-1])
    assert b.rgb["agentview"].flags.c_contiguous and b.metadata["flipped"] is True
    auto = Hdf5DemoSource(str(libero), flip="auto").read(unit)  # LIBERO files say macros_image_convention=opengl
    np.testing.assert_array_equal(auto.rgb["agentview"], b.rgb["agentview"])


def test_camera_depth_language_options(libero):
    src = Hdf5DemoSource(str(libero), cameras=["eye_in_hand_rgb"], depth=False, language="do it")
    ep = src.read(src.units()[0])
    assert ep.cameras == ["eye_in_hand"] and ep.depth == {} and ep.language == "do it"
    with pytest.raises(SourceError, match="camera 'wrist' not in data/demo_0/obs"):
        Hdf5DemoSource(str(libero), cameras=["wrist"]).read(src.units()[0])


def test_language_from_filename_when_no_problem_info(tmp_path):
    path = write_libero_hdf5(tmp_path / "LIVING_ROOM_SCENE2_pick_up_the_book_demo.hdf5", demos=1, problem_info=False)
    src = Hdf5DemoSource(str(path))
    assert src.read(src.units()[0]).language == "pick up the book"
    assert language_from_filename("libero_spatial/pick_up_the_black_bowl_demo.hdf5") == "pick up the black bowl"


def test_robomimic_layout_and_filter_key(tmp_path):
    path = write_robomimic_hdf5(tmp_path / "image.hdf5", demos=3)
    src = open_source("hdf5", str(path))
    ep = src.read(src.units()[2])
    with h5py.File(path) as f:
        obs = f["data/demo_2/obs"]
        np.testing.assert_array_equal(ep.rgb["agentview"], obs["agentview_image"][()])
        np.testing.assert_allclose(ep.ee_pose[:, 3:], obs["robot0_eef_quat"][()].astype(np.float32), atol=1e-6)
        np.testing.assert_allclose(ep.state[:, :7], obs["robot0_joint_pos"][()].astype(np.float32))
    assert ep.cameras == ["agentview", "robot0_eye_in_hand"] and ep.metadata["format"] == "robomimic"
    assert ep.state.shape == (7, 9) and ep.fps == 20.0
    train = Hdf5DemoSource(str(path), filter_key="train").units()
    assert [u["demo"] for u in train] == ["demo_0", "demo_2"]
    bad = Hdf5DemoSource(str(path), filter_key="nope").units()
    assert len(bad) == 1 and "filter key 'nope' not found" in bad[0]["error"]


def test_directory_of_files_with_bad_inputs(tmp_path):
    root = tmp_path / "suite"
    root.mkdir()
    good = write_libero_hdf5(root / "a_good_demo.hdf5", demos=2, steps=4, size=8)
    write_libero_hdf5(root / "b_missing_demo.hdf5", demos=2, steps=4, size=8, missing_actions_demo=1)
    write_libero_hdf5(root / "c_nan_demo.hdf5", demos=2, steps=4, size=8, nan_demo=0)
    write_libero_hdf5(root / "d_mismatch_demo.hdf5", demos=2, steps=4, size=8, mismatch_demo=1)
    truncate_copy(good, root / "e_truncated_demo.hdf5", 0.6)
    (root / "f_text_demo.hdf5").write_text("not hdf5")
    src = Hdf5DemoSource(str(root))
    units = {u["id"]: u for u in src.units()}
    assert len(units) == 10 and len(set(units)) == 10
    for uid in ("a_good_demo_demo_0", "a_good_demo_demo_1", "b_missing_demo_demo_0", "c_nan_demo_demo_1"):
        assert src.read(units[uid]).length >= 4
    expected = {
        "b_missing_demo_demo_1": "data/demo_1/actions is missing",
        "c_nan_demo_demo_0": "field 'actions': non-finite value at step 2, dim 3",
        "d_mismatch_demo_demo_1": "data/demo_1/actions has 3 steps but data/demo_1/obs/agentview_rgb has 5",
        "e_truncated_demo": "HDF5 file is truncated",
        "f_text_demo": "cannot open as HDF5",
    }
    for uid, reason in expected.items():
        with pytest.raises(SourceError, match=reason) as info:
            src.read(units[uid])
        assert info.value.file == units[uid]["file"] and info.value.episode == uid


def test_missing_obs_and_no_camera(tmp_path):
    path = tmp_path / "odd.hdf5"
    with h5py.File(path, "w") as f:
        f.create_group("data/demo_0").create_dataset("actions", data=np.zeros((3, 2)))
        g = f.create_group("data/demo_1")
        g.create_dataset("actions", data=np.zeros((3, 2)))
        g.create_group("obs").create_dataset("joint_states", data=np.zeros((3, 7)))
    src = Hdf5DemoSource(str(path))
    u0, u1 = src.units()
    with pytest.raises(SourceError, match="data/demo_0 has no 'obs' group"):
        src.read(u0)
    with pytest.raises(SourceError, match="no camera images in data/demo_1/obs"):
        src.read(u1)


def test_dual_arm_quaternion_ee(tmp_path):
    """ALOHA-style layout: ee_pos (T, 6) and ee_ori (T, 8) = two xyzw quaternions."""
    path = write_libero_hdf5(tmp_path / "aloha.hdf5", demos=1, steps=4, size=8)
    q = random_quats(8, seed=5).reshape(4, 8)
    with h5py.File(path, "a") as f:
        obs = f["data/demo_0/obs"]
        del obs["ee_pos"], obs["ee_ori"]
        obs.create_dataset("ee_pos", data=np.arange(24, dtype=np.float32).reshape(4, 6))
        obs.create_dataset("ee_ori", data=q)
    src = Hdf5DemoSource(str(path))
    ee = src.read(src.units()[0]).ee_pose
    assert ee.shape == (4, 14)
    np.testing.assert_allclose(ee[:, 0:3], np.arange(24).reshape(4, 6)[:, :3])
    np.testing.assert_allclose(ee[:, 7:10], np.arange(24).reshape(4, 6)[:, 3:])
    assert same_rotation(ee[:, 3:7], q[:, :4]) and same_rotation(ee[:, 10:14], q[:, 4:])


def test_rotation_helpers():
    quats = random_quats(20, seed=3)
    rotvec = np.stack([quat2axisangle(q) for q in quats])
    assert same_rotation(axis_angle_to_quat(rotvec), quats)
    np.testing.assert_allclose(axis_angle_to_quat(np.zeros((1, 3))), [[0, 0, 0, 1]])
    # 90 degrees about z, as Euler (0, 0, pi/2) and as axis-angle (0, 0, pi/2)
    expected = [[0, 0, np.sin(np.pi / 4), np.cos(np.pi / 4)]]
    np.testing.assert_allclose(euler_xyz_to_quat(np.array([[0, 0, np.pi / 2]])), expected, atol=1e-12)
    np.testing.assert_allclose(axis_angle_to_quat(np.array([[0, 0, np.pi / 2]])), expected, atol=1e-12)


def test_unique_ids_disambiguates_collisions():
    ids = unique_ids(["a/b", "a_b", "c"])
    assert ids[2] == "c" and ids[0] != ids[1] and all(i.startswith("a_b_") for i in ids[:2])


def test_open_source_errors(tmp_path, libero):
    assert {"hdf5", "replay_buffer", "video", "lerobot", "rlds"} <= set(SOURCE_KINDS)
    with pytest.raises(SpecError, match="valid kinds: hdf5, lerobot, replay_buffer, rlds, video"):
        open_source("tfds", str(libero))
    with pytest.raises(SpecError, match=r"no option\(s\) \['flipp'\]"):
        open_source("hdf5", str(libero), flipp=True)
    with pytest.raises(SpecError, match="flip"):
        open_source("hdf5", str(libero), flip="yes")
    assert "flip" in source_options("hdf5") and "clip_seconds" in source_options("video")
    with pytest.raises(SourceError, match="does not exist"):
        open_source("hdf5", str(tmp_path / "missing.hdf5"))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(SourceError, match="no .hdf5"):
        open_source("hdf5", str(tmp_path / "empty_dir"))
