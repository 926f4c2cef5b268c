"""VAE latents: loading equivalence with diffusers (Wan 2.1 / 2.2 / image VAE), trimming, the stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from motiondata.encode.base import Encoder, batches, resolve_device, resolve_dtype
from motiondata.encode.vae import VaeStage, load_video_vae, trim_4n1
from tests.factories_encode import (
    WAN21_TINY,
    WAN22_TINY,
    make_episode,
    make_item,
    random_frames,
    save_tiny_image_vae,
    save_tiny_wan,
)

DEMO = Path(__file__).resolve().parents[1] / "tokenizers" / "vae" / "demo-wan"


@pytest.fixture(scope="module")
def wan21_dir(tmp_path_factory) -> Path:
    return save_tiny_wan(tmp_path_factory.mktemp("wan21"), WAN21_TINY)


@pytest.fixture(scope="module")
def wan22_dir(tmp_path_factory) -> Path:
    return save_tiny_wan(tmp_path_factory.mktemp("wan22"), WAN22_TINY)


def direct_wan(directory: Path, frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.nn.Module]:
    """What a user writes by hand with diffusers: raw posterior mean and normalised latents."""
    from diffusers import AutoencoderKLWan

    model = AutoencoderKLWan.from_pretrained(directory).eval()
    x = torch.from_numpy(frames).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
    with torch.no_grad():
        mu = model.encode(x).latent_dist.mean
    mean = torch.tensor(model.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(model.config.latents_std).view(1, -1, 1, 1, 1)
    return mu, (mu - mean) / std, model


@pytest.mark.parametrize("length,expected", [(1, 1), (4, 1), (5, 5), (8, 5), (9, 9), (16, 13), (17, 17)])
def test_trim_4n1(length, expected):
    assert trim_4n1(length) == expected


@pytest.mark.parametrize("config_name", ["wan21", "wan22"])
def test_loading_matches_diffusers_exactly(config_name, wan21_dir, wan22_dir):
    directory, config = (wan21_dir, WAN21_TINY) if config_name == "wan21" else (wan22_dir, WAN22_TINY)
    frames = random_frames(2, 9, 32, 32, seed=1)
    vae = load_video_vae(str(directory), kind="wan", device="cpu", dtype="fp32")
    ours = vae.encode(frames)
    mu, expected, model = direct_wan(directory, frames)
    factor = config.get("scale_factor_spatial", 8)
    assert ours.shape == (2, config["z_dim"], 3, 32 // factor, 32 // factor)
    assert torch.equal(torch.from_numpy(ours), expected)
    with torch.no_grad():
        direct_pixels = model.decode(mu).sample
    recon = vae.decode(ours)
    expected_frames = ((direct_pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1)
    assert recon.shape == frames[:, :9].shape and recon.dtype == np.uint8
    assert np.abs(recon.astype(int) - expected_frames.numpy().astype(int)).max() <= 1


def test_trimming_encodes_leading_4n_plus_1_frames(wan21_dir):
    vae = load_video_vae(str(wan21_dir), device="cpu")
    frames = random_frames(1, 12, 16, 16, seed=2)
    assert vae.frames_used(12) == 9
    assert np.array_equal(vae.encode(frames), vae.encode(frames[:, :9]))


def test_image_vae_per_frame_matches_diffusers(tmp_path):
    from diffusers import AutoencoderKL

    directory = save_tiny_image_vae(tmp_path / "img")
    frames = random_frames(2, 3, 16, 24, seed=3)
    vae = load_video_vae(str(directory), kind="image", device="cpu")
    ours = vae.encode(frames)
    model = AutoencoderKL.from_pretrained(directory).eval()
    x = torch.from_numpy(frames).reshape(6, 16, 24, 3).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        mu = model.encode(x).latent_dist.mean
    expected = ((mu - model.config.shift_factor) * model.config.scaling_factor).reshape(2, 3, 4, 8, 12)
    assert ours.shape == (2, 4, 3, 8, 12)
    assert torch.equal(torch.from_numpy(ours), expected.permute(0, 2, 1, 3, 4))
    assert vae.decode(ours).shape == frames.shape


def test_model_is_cached_per_process(wan21_dir):
    a = load_video_vae(str(wan21_dir), device="cpu")
    b = load_video_vae(str(wan21_dir), device="cpu")
    assert a.model is b.model and not a.model.training
    assert not any(p.requires_grad for p in a.model.parameters())


def test_stage_side_by_side_and_short_window(wan21_dir):
    rgb = {"agentview": random_frames(1, 13, 16, 16, 4)[0], "wrist": random_frames(1, 13, 16, 16, 5)[0]}
    item = make_item(make_episode(rgb), window=9, stride=4)  # windows at 0 and 4, both 9 frames
    item = VaeStage(model=str(wan21_dir), device="cpu", batch_size=1)(item)
    for sample, f32 in zip(item["samples"], item["_vae_f32"]):
        z = sample["vae.latents"]
        assert z.dtype == np.float16 and z.shape == (4, 3, 2, 4)  # side by side: width 32 -> 4
        assert np.array_equal(z, f32["vae.latents"].astype(np.float16))
    short = make_item(make_episode({k: v[:7] for k, v in rgb.items()}), window=9, stride=4)
    short = VaeStage(model=str(wan21_dir), device="cpu")(short)
    assert short["samples"][0]["vae.latents"].shape == (4, 2, 2, 4)  # 7 frames -> 5 -> 2 latents


def test_stage_matches_direct_encoding_and_batch_size(wan21_dir):
    rgb = {"agentview": random_frames(1, 17, 16, 16, 6)[0]}
    stage = VaeStage(model=str(wan21_dir), device="cpu", batch_size=1)
    one = stage(make_item(make_episode(rgb), window=9, stride=4))
    many = VaeStage(model=str(wan21_dir), device="cpu", batch_size=8)(make_item(make_episode(rgb), 9, 4))
    _, expected, _ = direct_wan(wan21_dir, rgb["agentview"][None, 4:13])
    assert np.array_equal(one["_vae_f32"][1]["vae.latents"], expected[0].numpy())
    for a, b in zip(one["_vae_f32"], many["_vae_f32"]):
        np.testing.assert_allclose(a["vae.latents"], b["vae.latents"], atol=1e-5)


def test_stage_per_camera_fields_and_resize(wan21_dir):
    rgb = {"agentview": random_frames(1, 5, 20, 20, 7)[0], "wrist": random_frames(1, 5, 12, 12, 8)[0]}
    stage = VaeStage(model=str(wan21_dir), device="cpu", side_by_side=False, size=[16, 24])
    sample = stage(make_item(make_episode(rgb), 5, 5))["samples"][0]
    assert sample["vae.latents.agentview"].shape == sample["vae.latents.wrist"].shape == (4, 2, 2, 3)
    assert "vae.latents" not in sample
    assert stage.decode(sample["vae.latents.wrist"]).shape == (5, 16, 24, 3)


def test_stage_errors_name_the_fix(wan21_dir, tmp_path):
    rgb = {"agentview": random_frames(1, 5, 12, 12, 9)[0]}
    with pytest.raises(ValueError, match="size"):
        VaeStage(model=str(wan21_dir), device="cpu")(make_item(make_episode(rgb), 5, 5))
    with pytest.raises(KeyError, match="cameras"):
        VaeStage(model=str(wan21_dir), cameras=["front"], device="cpu")(make_item(make_episode(rgb), 5, 5))
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_video_vae(str(tmp_path), device="cpu")
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("int8")


def test_encoder_interface_and_config_hash(wan21_dir):
    a = VaeStage(model=str(wan21_dir))
    assert isinstance(a, Encoder) and a.name == "vae"
    assert a.config_hash() == VaeStage(model=str(wan21_dir)).config_hash()
    assert a.config_hash() != VaeStage(model=str(wan21_dir), dtype="bf16").config_hash()
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype("fp16") is torch.float16
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert [list(b) for b in batches([1, 2, 3], 2)] == [[1, 2], [3]]
    with pytest.raises(AttributeError):
        a.model = "other"  # frozen


def test_bf16_on_cpu_is_close_to_fp32(wan21_dir):
    frames = random_frames(1, 5, 16, 16, seed=10)
    fp32 = load_video_vae(str(wan21_dir), device="cpu", dtype="fp32").encode(frames)
    bf16 = load_video_vae(str(wan21_dir), device="cpu", dtype="bf16").encode(frames)
    assert bf16.dtype == np.float32
    assert np.abs(bf16 - fp32).max() < 0.1 * (np.abs(fp32).max() + 1)


@pytest.mark.skipif(not (DEMO / "config.json").exists(), reason="demo VAE not trained yet")
def test_demo_model_is_a_small_wan_vae():
    files = list(DEMO.glob("*.safetensors"))
    assert files and sum(f.stat().st_size for f in files) <= 5 * 1024 * 1024
    config = json.loads((DEMO / "config.json").read_text())
    assert config["_class_name"] == "AutoencoderKLWan" and len(config["latents_mean"]) == config["z_dim"]
    vae = load_video_vae(str(DEMO), device="cpu")
    frames = random_frames(1, 5, 32, 32, seed=11)
    z = vae.encode(frames)
    assert z.shape == (1, config["z_dim"], 2, 4, 4) and np.isfinite(z).all()


@pytest.mark.gpu
def test_cuda_bf16_close_to_cpu(wan21_dir):
    frames = random_frames(1, 9, 32, 32, seed=12)
    cpu = load_video_vae(str(wan21_dir), device="cpu").encode(frames)
    gpu = load_video_vae(str(wan21_dir), device="cuda", dtype="bf16").encode(frames)
    assert np.abs(gpu - cpu).max() < 0.1 * (np.abs(cpu).max() + 1)
