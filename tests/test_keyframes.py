"""Keyframe selection policies and the keyframe stage on a tiny episode."""

from __future__ import annotations

import numpy as np
import pytest

from motiondata.encode.keyframes import (ChunkStarts, FixedStride, KeyframeStage, MotionAdaptive, make_policy,
                                        motion_energy, save_pngs)
from motiondata.encode.vqgan import VQGANCodec, load_vqgan
from motiondata.pipeline.stage import Window, plan_windows
from tests.factories_vqgan import moving_square_frames, tiny_episode, write_taming_checkpoint


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def vq_files(tmp_path_factory):
    yaml_path, ckpt_path, _ = write_taming_checkpoint(tmp_path_factory.mktemp("kf"))
    return str(yaml_path), str(ckpt_path)


def make_item(episode, window: int = 8, stride: int = 4) -> dict:
    windows = plan_windows(episode.length, window, stride)
    samples = [{"__key__": f"{episode.id}_{w.index:06d}"} for w in windows]
    return {"episode": episode, "windows": windows, "samples": samples, "episode_fields": {}}


def test_chunk_starts_follow_the_window_and_clamp_to_episode():
    policy = ChunkStarts(chunk=10, count=2)
    assert policy.select(Window(0, 5, 10), length=100).tolist() == [5, 15]
    assert policy.select(Window(3, 92, 8), length=100).tolist() == [92, 99]
    assert ChunkStarts(chunk=5, count=3).select(Window(0, 0, 16), 40).dtype == np.int32


def test_fixed_stride_is_an_episode_grid():
    policy = FixedStride(stride=4, count=2)
    assert policy.select(Window(0, 5, 8), 100).tolist() == [8, 12]
    assert policy.select(Window(1, 8, 8), 100).tolist() == [8, 12]
    assert FixedStride(stride=4, count=2, phase=1).select(Window(0, 5, 8), 100).tolist() == [5, 9]


def test_motion_adaptive_starts_at_window_and_waits_for_motion():
    frames = moving_square_frames(length=20, still_until=7)
    energy = motion_energy(frames)
    assert energy[0] == 0 and energy[1:8].max() == 0 and energy[8] > 0
    picks = MotionAdaptive(count=2, threshold=1.0).select(Window(0, 0, 20), 20, frames)
    assert picks.tolist() == [0, 8]
    assert np.array_equal(picks, MotionAdaptive(count=2, threshold=1.0).select(Window(0, 0, 20), 20, frames))


def test_motion_adaptive_pads_with_span_end_when_nothing_moves():
    frames = np.zeros((12, 16, 16, 3), np.uint8)
    picks = MotionAdaptive(count=3, threshold=1.0).select(Window(0, 2, 6), 12, frames)
    assert picks.tolist() == [2, 7, 7]
    with pytest.raises(ValueError, match="needs the episode frames"):
        MotionAdaptive().select(Window(0, 0, 4), 12)


def test_make_policy_names_and_errors():
    assert make_policy("chunk_starts", chunk=5, count=2) == ChunkStarts(5, 2)
    assert make_policy("fixed_stride", chunk=5, count=2) == FixedStride(5, 2)
    assert make_policy("fixed_stride", chunk=5, count=2, stride=3) == FixedStride(3, 2)
    assert isinstance(make_policy("motion_adaptive"), MotionAdaptive)
    with pytest.raises(ValueError, match="unknown"):
        make_policy("every_frame")
    with pytest.raises(ValueError, match=">= 1"):
        make_policy("chunk_starts", chunk=0)


def test_stage_adds_codes_and_indices_per_window(vq_files):
    config, weights = vq_files
    stage = KeyframeStage(config=config, weights=weights, chunk=10, count=2, device="cpu")
    episode = tiny_episode(length=24)
    item = stage(make_item(episode))
    codec = VQGANCodec(load_vqgan(config, weights))
    assert len(item["samples"]) == len(item["windows"]) == 5
    for window, sample in zip(item["windows"], item["samples"]):
        index, codes = sample["keyframes.index"], sample["keyframes.codes"]
        assert index.dtype == np.int32 and codes.dtype == np.int32
        assert index.tolist() == [window.start, min(window.start + 10, 23)]
        assert codes.shape == (2, 16, 16)  # 32 px, ch_mult [1, 2] -> 2x
        assert np.array_equal(codes, codec.encode(episode.rgb["agentview"][index]))


def test_stage_resizes_and_picks_camera(vq_files):
    config, weights = vq_files
    episode = tiny_episode(length=12, size=40, cameras=("agentview", "wrist"))
    stage = KeyframeStage(config=config, weights=weights, size=16, camera="wrist", policy="motion_adaptive",
                          count=3, threshold=2.0, device="cpu")
    item = stage(make_item(episode, window=6, stride=6))
    assert item["samples"][0]["keyframes.codes"].shape == (3, 8, 8)
    images = stage.decode_to_images(item["samples"][0]["keyframes.codes"])
    assert images.shape == (3, 16, 16, 3) and images.dtype == np.uint8
    with pytest.raises(ValueError, match="camera 'side'"):
        KeyframeStage(config=config, weights=weights, camera="side", device="cpu")(make_item(episode))


def test_stage_parameters_are_validated_and_hashed(vq_files):
    config, weights = vq_files
    with pytest.raises(ValueError, match="unknown"):
        KeyframeStage(config=config, weights=weights, policy="random")
    a = KeyframeStage(config=config, weights=weights)
    assert a.config_hash() == KeyframeStage(config=config, weights=weights).config_hash()
    assert a.config_hash() != KeyframeStage(config=config, weights=weights, chunk=5).config_hash()
    assert a.name == "keyframes"


def test_save_pngs_writes_readable_files(tmp_path):
    import cv2

    images = moving_square_frames(length=2, size=16)
    paths = save_pngs(images, tmp_path / "png", stem="ep_0")
    assert [p.name for p in paths] == ["ep_0_000.png", "ep_0_001.png"]
    assert np.array_equal(cv2.imread(str(paths[1]))[..., ::-1], images[1])


def test_config_hash_follows_weight_contents(tmp_path):
    yaml_path, ckpt_path, _ = write_taming_checkpoint(tmp_path / "a", seed=0)
    stage = KeyframeStage(config=str(yaml_path), weights=str(ckpt_path))
    before = stage.config_hash()
    write_taming_checkpoint(tmp_path / "a", seed=1)
    assert stage.config_hash() != before
