"""The shipped plugin stages on the episode-table contract: image_embed, text_tokens, universal_actions,
motion_tokens. Tiny random-init transformers models are saved to tmp folders in the tests; one
end-to-end recipe build runs every stage on the bundled sample data."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import numpy as np
import pytest

from motiondata.encode.hf_local import ModelDirError
from motiondata.encode.image_embed import ImageEmbedStage
from motiondata.encode.make_demo_encoders import tiny_text_encoder, tiny_vision_model
from motiondata.encode.motion_tokens import MotionTokensStage, TinyIdmTokenizer, load_motion_tokenizer, save_tiny_idm
from motiondata.encode.text_tokens import TextTokensStage
from motiondata.encode.train_tiny_idm import train_idm
from motiondata.encode.vae_tables import latent_frames
from motiondata.episode import Episode
from motiondata.errors import SpecError
from motiondata.pipeline.registry import build_stage, plugin_version
from motiondata.pipeline.tables import Table
from motiondata.tokenize.universal_stage import UniversalActionsStage, group_actions

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample" / "aloha_sim.hdf5"
DEMO = {"siglip": ROOT / "tokenizers/vision/demo-siglip", "t5": ROOT / "tokenizers/text/demo-t5",
        "idm": ROOT / "tokenizers/idm/demo"}


def tiny_episode(frames: int = 9, size: int = 32, language: str = "pick up the cube") -> Episode:
    rng = np.random.default_rng(0)
    rgb = {c: rng.integers(0, 255, (frames, size, size, 3), dtype=np.uint8) for c in ("top", "wrist")}
    actions = rng.normal(size=(frames, 14)).astype(np.float32)
    return Episode(id="ep0", source="test", fps=10.0, rgb=rgb, language=language, actions=actions)


def item_for(episode: Episode, needs: dict | None = None) -> dict:
    return {"episode": episode, "tables": {}, "anchors": [0], "needs": needs or {}, "f32": {}}


@pytest.fixture(scope="module")
def vision_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision")
    return {k: tiny_vision_model(k, root / k, image_size=32, patch=8, hidden=32) for k in ("siglip", "clip", "dinov2")}


@pytest.mark.parametrize("kind,pooled_dim", [("siglip", 32), ("clip", 16), ("dinov2", 32)])
def test_image_embed_pooled_and_patches(vision_models, kind, pooled_dim, one_torch_thread):
    episode = tiny_episode()
    pooled = ImageEmbedStage(model=str(vision_models[kind]), cameras=["top"], device="cpu")
    item = pooled.build_tables(item_for(episode, {"image_embed.top": [0, 4, 8, 99]}))
    table = item["tables"]["image_embed.top"]
    assert table.axis == "keyframe" and table.frames.tolist() == [0, 4, 8]
    assert table.values.shape == (3, pooled_dim) and table.values.dtype == np.float16
    again = pooled.build_tables(item_for(episode, {"image_embed.top": [4]}))["tables"]["image_embed.top"]
    np.testing.assert_array_equal(again.values[0], table.values[1])  # same frame, same bytes, batch-independent
    patches = ImageEmbedStage(model=str(vision_models[kind]), pooled=False, stride=1, prefix="p", device="cpu")
    tables = patches.build_tables(item_for(episode))["tables"]
    assert sorted(tables) == ["p.top", "p.wrist"]
    assert tables["p.top"].axis == "frame" and tables["p.top"].values.shape == (9, 16, 32)  # 4x4 patches, no CLS


def test_image_embed_pooled_matches_the_model(vision_models, one_torch_thread):
    import torch
    from transformers import AutoImageProcessor, CLIPVisionModelWithProjection

    episode = tiny_episode(frames=2)
    stage = ImageEmbedStage(model=str(vision_models["clip"]), cameras=["top"], stride=1, device="cpu")
    stored = stage.build_tables(item_for(episode))["tables"]["image_embed.top"].values
    model = CLIPVisionModelWithProjection.from_pretrained(vision_models["clip"]).eval()
    pixels = AutoImageProcessor.from_pretrained(vision_models["clip"])(images=list(episode.rgb["top"]),
                                                                        return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = model(pixel_values=pixels).image_embeds.numpy()
    np.testing.assert_allclose(stored.astype(np.float32), expected, atol=2e-3, rtol=2e-3)


def test_image_embed_bad_inputs_name_the_fix(tmp_path, vision_models):
    with pytest.raises(ModelDirError, match="not a local directory"):
        ImageEmbedStage(model=str(tmp_path / "nope"), device="cpu").load()
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((vision_models["siglip"] / "config.json").read_text())
    with pytest.raises(ModelDirError, match="preprocessor_config.json"):
        ImageEmbedStage(model=str(bare), device="cpu").load()
    stage = ImageEmbedStage(model=str(vision_models["siglip"]), cameras=["left"], device="cpu")
    with pytest.raises(KeyError, match="cameras"):
        stage.build_tables(item_for(tiny_episode()))


@pytest.mark.parametrize("kind", ["t5", "umt5"])
def test_text_tokens_shapes_mask_and_padding(tmp_path, kind, one_torch_thread):
    folder = tiny_text_encoder(tmp_path / kind, kind=kind, d_model=32)
    stage = TextTokensStage(model=str(folder), max_length=12, device="cpu")
    tables = stage.build_tables(item_for(tiny_episode(language="pick up the cube")))["tables"]
    tokens, mask = tables["text_tokens.tokens"], tables["text_tokens.mask"]
    assert tokens.axis == mask.axis == "episode"
    assert tokens.values.shape == (1, 12, 32) and tokens.values.dtype == np.float16
    assert mask.values.shape == (1, 12) and mask.values.dtype == np.uint8
    real = int(mask.values.sum())
    assert 2 <= real < 12 and mask.values[0, :real].all()  # words then </s>, then padding
    assert not tokens.values[0, real:].any() and tokens.values[0, :real].any()
    long = stage.build_tables(item_for(tiny_episode(language="pick up the cube " * 20)))["tables"]
    assert long["text_tokens.mask"].values.sum() == 12  # truncated to max_length


def test_text_tokens_refuses_a_non_t5_model(vision_models):
    with pytest.raises(ModelDirError, match="T5, umT5 or mT5"):
        TextTokensStage(model=str(vision_models["siglip"]), device="cpu").load()


def test_group_actions_follows_the_wan_latent_frames():
    actions = np.arange(18, dtype=np.float32)[:, None]  # frame index as the value
    grouped, mask, frames = group_actions(actions, 4)
    assert frames.tolist() == latent_frames("wan", 5).tolist() == [0, 4, 8, 12, 16]
    assert grouped.shape == (5, 4, 1) and mask.shape == (5, 4)
    assert grouped[0, :, 0].tolist() == [0, 0, 0, 0] and mask[0].tolist() == [0, 0, 0, 1]
    assert grouped[1, :, 0].tolist() == [1, 2, 3, 4] and mask[1:].all()
    assert grouped[4, :, 0].tolist() == [13, 14, 15, 16]  # frame 17 lies past the last 4n+1: not covered


def test_universal_actions_tables_and_bad_mapping():
    episode = tiny_episode(frames=9)
    tables = UniversalActionsStage(mapping="aloha").build_tables(item_for(episode))["tables"]
    acts, mask = tables["universal_actions.actions"], tables["universal_actions.mask"]
    assert acts.values.shape == (9, 30) and acts.values.dtype == np.float32 and acts.axis == "frame"
    assert mask.values.shape == (9, 30) and mask.values.dtype == np.uint8 and mask.values.sum() == 9 * 14
    np.testing.assert_array_equal(acts.values[:, 14:20], episode.actions[:, 0:6])  # left joints
    assert acts.values[:, 29].tolist() == episode.actions[:, 13].tolist()  # right gripper
    assert tables["universal_actions.grouped"].values.shape == (3, 4, 30)
    assert tables["universal_actions.grouped_mask"].axis == "latent"
    assert "universal_actions.grouped" not in UniversalActionsStage(group=None).build_tables(
        item_for(episode))["tables"]
    with pytest.raises(SpecError, match="valid parameters"):
        build_stage({"name": "universal_actions", "mapping": "nope"})


def _latent_item(z: np.ndarray, axis: str = "latent") -> dict:
    item = item_for(tiny_episode(frames=4 * (len(z) - 1) + 1))
    item["tables"]["vae.latents"] = Table(z.astype(np.float16), latent_frames("wan", len(z)), axis)
    item["f32"]["vae.latents"] = z
    return item


def test_motion_tokens_train_save_load_deterministic(tmp_path, one_torch_thread):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(12, 16, 4, 4)).astype(np.float32)
    model, info = train_idm([(z[:-1], z[1:])], steps=5, batch=8, tokens=3, codebook_size=16)
    assert info["steps"] == 5
    folder = save_tiny_idm(model, tmp_path / "idm", info)
    assert json.loads((folder / "config.json").read_text())["kind"] == "tiny_idm"
    stage = MotionTokensStage(model=str(folder), device="cpu", prefix="mt")
    tables = stage.build_tables(_latent_item(z))["tables"]
    codes, vectors = tables["mt.codes"], tables["mt.vectors"]
    assert codes.values.shape == (11, 3, 3) and codes.values.dtype == np.int32 and codes.axis == "latent"
    assert codes.frames.tolist() == latent_frames("wan", 12)[1:].tolist()  # at the frame of z_{t+1}
    assert codes.values.min() >= 0 and codes.values.max() < 16
    assert vectors.values.shape == (11, 3, 3, 8) and vectors.values.dtype == np.float16
    again = MotionTokensStage(model=str(folder), device="cpu", prefix="mt").build_tables(_latent_item(z))
    np.testing.assert_array_equal(again["tables"]["mt.codes"].values, codes.values)
    tokenizer = load_motion_tokenizer(str(folder), "cpu")
    np.testing.assert_array_equal(tokenizer.encode(z[3:4], z[4:5])[0], codes.values[3])  # one pair alone


def test_motion_tokens_bad_inputs_name_the_fix(tmp_path):
    stage = MotionTokensStage(model=str(DEMO["idm"]), device="cpu")
    with pytest.raises(KeyError, match="list a vae stage"):
        stage.build_tables(item_for(tiny_episode()))
    with pytest.raises(ValueError, match="scope: episode"):
        stage.build_tables(_latent_item(np.zeros((3, 16, 4, 4), np.float32), axis="clip"))
    with pytest.raises(ValueError, match="trained on this VAE"):
        stage.build_tables(_latent_item(np.zeros((3, 8, 4, 4), np.float32)))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"kind": "tests.test_plugin_stages:not_a_tokenizer"}))
    with pytest.raises(ModelDirError, match="not a MotionTokenizer"):
        load_motion_tokenizer(str(bad), "cpu")
    (bad / "config.json").write_text(json.dumps({"kind": "pickle"}))
    with pytest.raises(ModelDirError, match="tiny_idm"):
        load_motion_tokenizer(str(bad), "cpu")


def not_a_tokenizer(folder, device):
    return object()


class ConstantTokenizer:
    levels, tokens = 1, 2

    def encode(self, z_t, z_next):
        return np.full((len(z_t), 1, 2), 7, np.int32)


def constant_tokenizer(folder, device):
    return ConstantTokenizer()


def test_motion_tokens_plugin_model(tmp_path):
    folder = tmp_path / "plugin"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"kind": "tests.test_plugin_stages:constant_tokenizer"}))
    tables = MotionTokensStage(model=str(folder), device="cpu").build_tables(
        _latent_item(np.zeros((4, 16, 4, 4), np.float32)))["tables"]
    assert tables["motion_tokens.codes"].values.shape == (3, 1, 2)
    assert "motion_tokens.vectors" not in tables  # no embed(): codes only


def test_shipped_demo_models_load_and_are_small():
    for folder in DEMO.values():
        assert sum(p.stat().st_size for p in folder.iterdir()) < 2_000_000
    assert isinstance(MotionTokensStage(model=str(DEMO["idm"]), device="cpu").load(), TinyIdmTokenizer)
    assert json.loads((DEMO["idm"] / "training.json").read_text())["held_out"]["prediction_mse"] < 0.1
    ImageEmbedStage(model=str(DEMO["siglip"]), device="cpu").load()
    TextTokensStage(model=str(DEMO["t5"]), device="cpu").load()


def test_registry_names_params_and_plugin_path():
    bound = build_stage({"name": "image_embed", "model": str(DEMO["siglip"]), "as": "siglip"})
    assert bound.stage.prefix == "siglip"
    with pytest.raises(SpecError, match="valid parameters: .*pooled"):
        build_stage({"name": "image_embed", "model": str(DEMO["siglip"]), "pool": True})
    path = "motiondata.tokenize.universal_stage:UniversalActionsStage"
    assert isinstance(build_stage({"name": path, "group": 2}).stage, UniversalActionsStage)
    assert plugin_version(path)  # the installed motiondata version goes into the manifest
    assert build_stage({"name": "text_tokens", "model": str(DEMO["t5"])}).stage.config_hash() != \
        build_stage({"name": "text_tokens", "model": str(DEMO["t5"]), "max_length": 8}).stage.config_hash()


SPEC = f"""
name: plugins
sources:
  - {{kind: hdf5, path: {SAMPLE}, name: aloha}}
frames: {{size: [32, 32]}}
shards: {{episodes_per_shard: 5}}
samples:
  stride: 20
  fields:
    img: {{from: siglip.top, offsets: [-6, 0, 6]}}
    text: {{from: text_tokens.tokens, offsets: [0]}}
    text.mask: {{from: text_tokens.mask, offsets: [0]}}
    actions30: {{from: universal_actions.actions, offsets: {{start: 0, stop: 4}}}}
    actions30.mask: {{from: universal_actions.mask, offsets: [0]}}
    grouped: {{from: universal_actions.grouped, offsets: {{start: -1, stop: 1}}, index: rows}}
    grouped.mask: {{from: universal_actions.grouped_mask, offsets: {{start: -1, stop: 1}}, index: rows}}
    z: {{from: vae.latents, offsets: [0], index: rows}}
    m_hist: {{from: motion_tokens.codes, offsets: {{start: -2, stop: 1}}, index: rows}}
    m_next: {{from: motion_tokens.codes, offsets: [1], index: rows}}
stages:
  - {{name: image_embed, as: siglip, model: {DEMO['siglip']}, cameras: [top]}}
  - {{name: text_tokens, model: {DEMO['t5']}, max_length: 16}}
  - {{name: universal_actions, mapping: aloha, group: 4}}
  - {{name: vae, model: {ROOT / 'tokenizers/vae/demo-wan'}, cameras: [top], dtype: fp32}}
  - {{name: motion_tokens, model: {DEMO['idm']}}}
"""


@pytest.fixture(scope="module")
def plugin_store(tmp_path_factory):
    import yaml

    from motiondata.pipeline.runner import run_job
    from motiondata.pipeline.spec import parse_spec

    out = tmp_path_factory.mktemp("plugin_store") / "out"
    run_job(parse_spec(yaml.safe_load(SPEC)), out, executor="local", show_progress=False)
    return out


@pytest.mark.slow
def test_recipe_build_with_every_plugin_stage(plugin_store):
    from motiondata.store.shards import iter_shard

    assert (plugin_store / "errors.jsonl").read_text().strip() == ""
    samples = [s for tar in sorted(glob.glob(str(plugin_store / "shards" / "*.tar"))) for s in iter_shard(tar)]
    assert len(samples) == 5 * 4
    s = next(x for x in samples if x["meta"]["anchor"] == 20)
    frames = s["meta"]["frames"]
    assert s["img"].shape == (3, 64) and s["img"].dtype == np.float16 and frames["img"] == [14, 20, 26]
    assert s["text"].shape == (1, 16, 64) and s["text.mask"].shape == (1, 16) and s["text.mask"].dtype == np.uint8
    assert s["actions30"].shape == (4, 30) and s["actions30"].dtype == np.float32
    assert s["actions30.mask"][0].sum() == 14
    assert s["grouped"].shape == (2, 4, 30) and frames["grouped"] == [16, 20]
    assert s["grouped.mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 1]]
    np.testing.assert_array_equal(s["grouped"][1][3], s["actions30"][0])  # the latent's last slot is frame 20
    assert s["z"].shape == (1, 16, 4, 4) and frames["z"] == [20]
    assert s["m_hist"].shape == (3, 3, 4) and s["m_hist"].dtype == np.int32 and frames["m_hist"] == [12, 16, 20]
    assert frames["m_next"] == [24] and not s["m_hist.pad"].any()
    first = next(x for x in samples if x["meta"]["anchor"] == 0)
    assert first["img.pad"].tolist() == [True, False, False] and first["m_hist.pad"].all()
    assert first["grouped.mask"][1].tolist() == [0, 0, 0, 1]  # latent 0: frame 0 alone


@pytest.mark.slow
def test_recipe_tables_match_a_direct_encode(plugin_store, one_torch_thread):
    from motiondata.pipeline.table_build import load_tables

    tables, _ = load_tables(plugin_store, "aloha_demo_1")
    emb = tables["siglip.top"]
    assert emb.axis == "keyframe" and emb.frames.tolist()[:4] == [0, 6, 14, 20]
    direct = ImageEmbedStage(model=str(DEMO["siglip"]), device="cpu").encode(tables["rgb.top"].values[[20]])
    np.testing.assert_allclose(emb.values[3].astype(np.float32), direct[0], atol=2e-3, rtol=2e-3)
    z = tables["vae.latents"].values.astype(np.float32)
    codes = load_motion_tokenizer(str(DEMO["idm"]), "cpu").encode(z[4:5], z[5:6])
    assert (codes[0] == tables["motion_tokens.codes"].values[4]).mean() > 0.9  # float16-stored latents: near-equal
    actions = tables["universal_actions.actions"].values
    grouped = tables["universal_actions.grouped"].values
    np.testing.assert_array_equal(grouped[5], actions[17:21])
