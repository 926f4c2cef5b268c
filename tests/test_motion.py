"""Motion latents z_m: pooling layout, shapes through a Wan VAE, locality of a moving object's motion."""

from __future__ import annotations

import numpy as np
import pytest

from motiondata.encode.motion import MotionStage, motion_latents
from motiondata.encode.vae import VaeStage
from tests.factories_encode import (
    WAN21_TINY,
    make_episode,
    make_item,
    moving_object_clip,
    random_frames,
    save_tiny_wan,
)

SIZE, FRAMES = 256, 13  # 32x32 latents, 4 latent frames
BOX, START, STEP = 12, 4, 4  # object pixels 4..64 -> latent rows/cols 0..8
FAR = 20  # latent rows/cols >= FAR lie beyond the encoder's spatial receptive field of the path (~8 latents)


def test_pooling_layout_by_hand():
    z = np.random.default_rng(0).normal(size=(4, 5, 6, 7)).astype(np.float32)
    out = motion_latents(z)
    d = z[:, 1:] - z[:, :-1]
    assert out["pool_h"].shape == (4, 4, 7) and out["pool_w"].shape == (4, 4, 6) and out["zm"].shape == (4, 4, 13)
    np.testing.assert_allclose(out["pool_h"], d.mean(axis=2), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["pool_w"], d.mean(axis=3), rtol=1e-5, atol=1e-6)
    assert np.array_equal(out["zm"][..., :7], out["pool_h"]) and np.array_equal(out["zm"][..., 7:], out["pool_w"])
    plain = motion_latents(z, difference=False)
    assert plain["zm"].shape == (4, 5, 13)
    with pytest.raises(ValueError, match="vae stage"):
        motion_latents(z[0])


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    return save_tiny_wan(tmp_path_factory.mktemp("wan"), WAN21_TINY)


@pytest.fixture(scope="module")
def local_wan_dir(tmp_path_factory):
    return save_tiny_wan(tmp_path_factory.mktemp("wanlocal"), WAN21_TINY, frame_local=True)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_shapes_for_1_plus_4k_frames(wan_dir, k):
    rgb = {"agentview": random_frames(1, 1 + 4 * k, 16, 24, seed=k)[0]}
    item = make_item(make_episode(rgb), window=1 + 4 * k, stride=1 + 4 * k)
    item = MotionStage()(VaeStage(model=str(wan_dir), device="cpu")(item))
    sample = item["samples"][0]
    assert sample["vae.latents"].shape == (4, 1 + k, 2, 3)
    assert sample["motion.pool_h"].shape == (4, k, 3) and sample["motion.pool_h"].dtype == np.float16
    assert sample["motion.pool_w"].shape == (4, k, 2)
    assert sample["motion.zm"].shape == (4, k, 5)


def encode_motion(directory, frames):
    item = make_item(make_episode({"agentview": frames}), window=FRAMES, stride=FRAMES)
    item = MotionStage()(VaeStage(model=str(directory), device="cpu")(item))
    return item, motion_latents(item["_vae_f32"][0]["vae.latents"])


def test_moving_object_motion_stays_on_its_path(local_wan_dir):
    """Static texture + a box moving diagonally through the top-left corner.

    The encoder is made frame-local (``make_frame_local``: no temporal taps, no attention mixing), so
    static content gives *identical* latents after the first latent frame (a causal VAE encodes frame 0
    alone, so difference 0 also carries appearance and is excluded). Motion must then be exactly zero in
    latent rows/columns >= FAR, which the box never comes near, and non-zero along its path.
    """
    item, m = encode_motion(local_wan_dir, moving_object_clip(FRAMES, SIZE, START, STEP, BOX))
    pool_h, pool_w = m["pool_h"][:, 1:], m["pool_w"][:, 1:]  # differences after the first latent frame
    assert pool_h.shape == (4, 2, 32) and pool_w.shape == (4, 2, 32)
    np.testing.assert_allclose(pool_h[..., FAR:], 0, atol=1e-6)
    np.testing.assert_allclose(pool_w[..., FAR:], 0, atol=1e-6)
    last = (START + STEP * (FRAMES - 1) + BOX) // 8  # last latent row/col the box reaches
    for t in range(pool_h.shape[1]):
        assert np.abs(pool_h[:, t, :last]).max() > 1e-5 and np.abs(pool_w[:, t, :last]).max() > 1e-5
    stored = item["samples"][0]["motion.zm"]
    assert np.array_equal(stored, m["zm"].astype(np.float16))


def test_static_clip_gives_zero_motion_after_first_latent(local_wan_dir):
    _, m = encode_motion(local_wan_dir, moving_object_clip(FRAMES, SIZE, START, 0, BOX))  # box never moves
    np.testing.assert_allclose(m["zm"][:, 1:], 0, atol=1e-6)
    assert np.abs(m["zm"][:, 0]).max() > 1e-4  # z[1] - z[0]: causal first frame differs


def test_stage_reads_float16_latents_without_stash(wan_dir):
    rgb = {"a": random_frames(1, 9, 16, 16, seed=5)[0], "b": random_frames(1, 9, 16, 16, seed=6)[0]}
    item = VaeStage(model=str(wan_dir), device="cpu", side_by_side=False)(make_item(make_episode(rgb), 9, 9))
    del item["_vae_f32"]
    sample = MotionStage(difference=False)(item)["samples"][0]
    expected = motion_latents(sample["vae.latents.b"].astype(np.float32), difference=False)["zm"]
    assert np.array_equal(sample["motion.zm.b"], expected.astype(np.float16))
    assert sample["motion.pool_w.a"].shape == (4, 3, 2)


def test_stage_without_vae_latents_says_what_to_do():
    item = make_item(make_episode({"a": random_frames(1, 5, 16, 16)[0]}), 5, 5)
    with pytest.raises(KeyError, match="vae stage before the motion stage"):
        MotionStage()(item)
    assert MotionStage().config_hash() != MotionStage(difference=False).config_hash()
