"""The LingBot-VA 30-dim dual-arm layout: mapping into it, the used mask, and back."""

from __future__ import annotations

import numpy as np
import pytest

from motiondata.tokenize.universal import SLOTS, UNIVERSAL_DIM, UniversalMapping, UniversalMappingError


def dual_arm_fields(length: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"ee_pose": rng.normal(size=(length, 14)).astype(np.float32),
            "joints": rng.normal(size=(length, 12)).astype(np.float32),
            "gripper": rng.normal(size=(length, 2)).astype(np.float32)}


def full_mapping() -> UniversalMapping:
    return UniversalMapping.from_dict({
        "left": {"ee_pose": [0, 7], "joints": [0, 6], "gripper": [0, 1]},
        "right": {"ee_pose": [7, 14], "joints": ["joints", 6, 12], "gripper": ["gripper", 1, 2]},
    })


def test_layout_indices():
    assert SLOTS["left_ee_pose"] == (0, 7) and SLOTS["right_ee_pose"] == (7, 14)
    assert SLOTS["left_joints"] == (14, 21) and SLOTS["right_joints"] == (21, 28)
    assert SLOTS["left_gripper"] == (28, 29) and SLOTS["right_gripper"] == (29, 30)


def test_to_universal_places_fields_and_zero_pads():
    fields, mapping = dual_arm_fields(), full_mapping()
    u = mapping.to_universal(fields)
    assert u.shape == (5, UNIVERSAL_DIM) and u.dtype == np.float32
    np.testing.assert_array_equal(u[:, 0:7], fields["ee_pose"][:, :7])
    np.testing.assert_array_equal(u[:, 7:14], fields["ee_pose"][:, 7:])
    np.testing.assert_array_equal(u[:, 14:20], fields["joints"][:, :6])
    np.testing.assert_array_equal(u[:, 21:27], fields["joints"][:, 6:])
    assert not u[:, 20].any() and not u[:, 27].any()  # 6-joint arms: the 7th joint stays zero
    np.testing.assert_array_equal(u[:, 28], fields["gripper"][:, 0])
    np.testing.assert_array_equal(u[:, 29], fields["gripper"][:, 1])
    mask = mapping.used_mask()
    assert mask.sum() == 28 and mask[20] == 0 and mask[27] == 0


def test_round_trip():
    fields, mapping = dual_arm_fields(seed=3), full_mapping()
    back = mapping.from_universal(mapping.to_universal(fields), dims={"ee_pose": 14, "joints": 12, "gripper": 2})
    for name, values in fields.items():
        np.testing.assert_array_equal(back[name], values)


def test_aloha_preset_from_actions():
    actions = np.arange(3 * 14, dtype=np.float32).reshape(3, 14)
    mapping = UniversalMapping.from_dict("aloha")
    u = mapping.to_universal({"actions": actions})
    np.testing.assert_array_equal(u[:, 14:20], actions[:, 0:6])
    np.testing.assert_array_equal(u[:, 28], actions[:, 6])
    np.testing.assert_array_equal(u[:, 21:27], actions[:, 7:13])
    np.testing.assert_array_equal(u[:, 29], actions[:, 13])
    assert not u[:, :14].any()
    np.testing.assert_array_equal(mapping.from_universal(u)["actions"], actions)


def test_mapping_errors():
    with pytest.raises(UniversalMappingError, match="exactly 7"):
        UniversalMapping.from_dict({"left": {"ee_pose": [0, 3]}})
    with pytest.raises(UniversalMappingError, match="at most 7"):
        UniversalMapping.from_dict({"left": {"joints": [0, 8]}})
    with pytest.raises(UniversalMappingError, match="unknown slots"):
        UniversalMapping.from_dict({"middle": {"joints": [0, 2]}})
    with pytest.raises(UniversalMappingError, match="lacks"):
        full_mapping().to_universal({"ee_pose": np.zeros((2, 14), np.float32)})
    with pytest.raises(UniversalMappingError, match="reads joints"):
        full_mapping().to_universal({**dual_arm_fields(), "joints": np.zeros((5, 4), np.float32)})


def test_mapping_is_hashable_frozen():
    mapping = full_mapping()
    assert hash(mapping) == hash(full_mapping())
    with pytest.raises(AttributeError):
        mapping.left_joints = None  # type: ignore[misc]
