"""taming VQGAN loading: checkpoint layout, equivalence with taming.modules, codec shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from motiondata.encode.vqgan import (VQGANCodec, load_vqgan, parse_vqgan_config, read_state_dict, read_vqgan_config,
                                     save_vqgan)
from tests.factories_vqgan import (reference_codes, reference_decode, taming_yaml, tiny_ddconfig,
                                   write_taming_checkpoint)

PUBLISHED_F16_1024 = """
model:
  base_learning_rate: 4.5e-06
  target: taming.models.vqgan.VQModel
  params:
    embed_dim: 256
    n_embed: 1024
    ddconfig:
      double_z: false
      z_channels: 256
      resolution: 256
      in_channels: 3
      out_ch: 3
      ch: 128
      ch_mult: [1, 1, 2, 2, 4]
      num_res_blocks: 2
      attn_resolutions: [16]
      dropout: 0.0
    lossconfig:
      target: taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator
      params:
        disc_conditional: false
        disc_in_channels: 3
        disc_start: 250001
        disc_weight: 0.8
        codebook_weight: 1.0
"""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def taming_ckpt(tmp_path_factory):
    return write_taming_checkpoint(tmp_path_factory.mktemp("vqgan"))


def images(batch: int = 3, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_published_config_parses_to_16x_downsampling():
    cfg = parse_vqgan_config(PUBLISHED_F16_1024)
    assert (cfg.embed_dim, cfg.n_embed, cfg.resolution, cfg.downsample) == (256, 1024, 256, 16)
    assert cfg.ddconfig["attn_resolutions"] == [16]


def test_ckpt_loads_without_pickle_and_drops_loss(taming_ckpt):
    _, ckpt_path, ref = taming_ckpt
    raw = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert any(k.startswith("loss.") for k in raw["state_dict"])
    state = read_state_dict(ckpt_path)
    assert not any(k.startswith("loss.") for k in state)
    assert set(state) == set(ref.state_dict())
    assert state["quantize.embedding.weight"].shape == (64, 16)


def test_codes_and_decode_match_taming_modules(taming_ckpt):
    yaml_path, ckpt_path, ref = taming_ckpt
    model = load_vqgan(yaml_path, ckpt_path, device="cpu", dtype="fp32")
    x = images()
    with torch.no_grad():
        codes = model.encode_codes(x)
        decoded = model.decode_codes(codes)
    expected = reference_codes(ref, x)
    assert codes.shape == (3, 16, 16)  # ch_mult [1, 2] -> 2x downsampling
    assert torch.equal(codes, expected)
    assert len(torch.unique(codes)) > 4
    assert torch.equal(decoded, reference_decode(ref, expected))


def test_safetensors_roundtrip_gives_identical_codes(taming_ckpt, tmp_path):
    yaml_path, ckpt_path, ref = taming_ckpt
    model = load_vqgan(yaml_path, ckpt_path)
    save_vqgan(model, tmp_path / "demo")
    again = load_vqgan(tmp_path / "demo" / "model.yaml", tmp_path / "demo" / "model.safetensors")
    x = images(seed=2)
    with torch.no_grad():
        assert torch.equal(again.encode_codes(x), reference_codes(ref, x))
    assert read_vqgan_config(tmp_path / "demo" / "model.yaml") == model.config


def test_mismatched_weights_name_the_keys(taming_ckpt, tmp_path):
    _, ckpt_path, _ = taming_ckpt
    other = tiny_ddconfig() | {"ch_mult": [1, 2, 2]}
    (tmp_path / "other.yaml").write_text(taming_yaml(other))
    with pytest.raises(ValueError, match="do not match config"):
        load_vqgan(tmp_path / "other.yaml", ckpt_path)


@pytest.mark.parametrize("text, message", [
    ("model: {params: {embed_dim: 4}}", "n_embed"),
    ("foo: 1", "model.params"),
    ("model: {target: taming.models.vqgan.GumbelVQ, params: {}}", "GumbelVQ"),
])
def test_bad_configs_say_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        parse_vqgan_config(text)


def test_codec_frames_to_codes_and_back(taming_ckpt):
    yaml_path, ckpt_path, ref = taming_ckpt
    codec = VQGANCodec(load_vqgan(yaml_path, ckpt_path), batch_size=2)
    frames = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    codes = codec.encode(frames)
    assert codes.shape == (5, 16, 16) and codes.dtype == np.int32
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert np.array_equal(codes, reference_codes(ref, x).numpy())
    out = codec.decode(codes)
    assert out.shape == (5, 32, 32, 3) and out.dtype == np.uint8
    with pytest.raises(ValueError, match="outside"):
        codec.decode(np.full((1, 16, 16), 64))


def test_codec_resizes_other_frame_sizes(taming_ckpt):
    yaml_path, ckpt_path, _ = taming_ckpt
    codec = VQGANCodec(load_vqgan(yaml_path, ckpt_path), size=48)
    frames = np.zeros((2, 40, 60, 3), np.uint8)
    assert codec.encode(frames).shape == (2, 24, 24)
    assert codec.decode(codec.encode(frames)).shape == (2, 48, 48, 3)


@pytest.mark.gpu
def test_cuda_half_precision_codes_mostly_agree(taming_ckpt):
    yaml_path, ckpt_path, _ = taming_ckpt
    frames = np.random.default_rng(3).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    cpu = VQGANCodec(load_vqgan(yaml_path, ckpt_path)).encode(frames)
    gpu = VQGANCodec(load_vqgan(yaml_path, ckpt_path, device="cuda", dtype="bf16"))
    codes = gpu.encode(frames)
    assert codes.shape == cpu.shape and codes.dtype == np.int32
    assert (codes == cpu).mean() > 0.8
    assert gpu.decode(codes).shape == (4, 32, 32, 3)


def test_train_tiny_vqgan_writes_a_loadable_taming_model(tmp_path):
    import h5py

    from motiondata.encode.train_tiny_vqgan import main
    from tests.factories_vqgan import moving_square_frames

    with h5py.File(tmp_path / "demo.hdf5", "w") as f:
        for i in range(2):
            f.create_dataset(f"data/demo_{i}/obs/agentview_rgb", data=moving_square_frames(12, 40, seed=i))
            f.create_dataset(f"data/demo_{i}/actions", data=np.zeros((12, 7), np.float32))
    metrics = main(["--data", str(tmp_path / "demo.hdf5"), "--out", str(tmp_path / "out"), "--size", "32",
                    "--steps", "2", "--batch", "4", "--n-embed", "32"])
    assert metrics["steps"] == 2 and metrics["held_out"]["codes_per_keyframe"] == [8, 8]
    model = load_vqgan(tmp_path / "out" / "model.yaml", tmp_path / "out" / "model.safetensors")
    assert model.config.n_embed == 32 and (tmp_path / "out" / "metrics.json").is_file()
