"""Honest flow validity (static-background inference), depth for data without a depth sensor (the
shipped demo depth model, a transformers Depth Anything directory), and LaMP's normalisation.

Ground truth for static inference: a MuJoCo scene with a plain table, a plain moving box and its moving
shadow (``tests/factories_flow_static.plain_mujoco_scene``); asserted: no static-inferred entry lies on
the box, is hidden, or truly moves; static inference lifts valid table steps from ~30 % to >= 70 %.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from motiondata.encode.flow import LAMP_BOUNDS, compute_flow, count_clipped, grid_points, resample_equal_path
from motiondata.encode.flow_depth import MonocularDepth, select_depth
from motiondata.encode.flow_static import STATIC, TRACKED, StaticRule
from motiondata.encode.tiny_depth import TinyDepthConfig, load_tiny_depth
from tests.factories_flow import flow_item
from tests.factories_flow_static import depth_hdf5, plain_mujoco_scene, shadow_plane

ROOT = Path(__file__).resolve().parents[1]
SAMPLE, DEMO_DEPTH = ROOT / "data/sample/aloha_sim.hdf5", ROOT / "tokenizers/depth/demo"


def sample_camera(demo: str = "demo_0", cam: str = "top") -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(SAMPLE, "r") as f:
        return f[f"data/{demo}/obs/{cam}_rgb"][()], f[f"data/{demo}/obs/{cam}_depth"][()]


def test_static_inference_against_mujoco_ground_truth():
    os.environ.setdefault("MUJOCO_GL", "egl")
    mujoco = pytest.importorskip("mujoco")
    from tests.factories_flow import mujoco_true_tracks

    try:
        scene = plain_mujoco_scene(frames=24, size=64)
    except (mujoco.FatalError, RuntimeError, ImportError, OSError) as exc:  # no GL context
        pytest.skip(f"MuJoCo rendering unavailable: {exc}")
    pts, queries, steps = grid_points(64, 64), [0, 4], 16
    off = compute_flow(scene.frames, queries, scene.depth, steps=steps, static="off")
    res = compute_flow(scene.frames, queries, scene.depth, steps=steps)
    assert (off.valid_code == res.valid_code)[res.valid_code == TRACKED].all()   # tracked entries unchanged
    for qi, q in enumerate(queries):
        gt = mujoco_true_tracks(scene, q, pts, steps)
        static = res.valid_code[qi] == STATIC
        moved = np.linalg.norm(gt["xy"][:, 1:] - gt["xy"][:, :1], axis=-1) > 0.5
        assert static.sum() > 2000
        assert not static[gt["geom"] == scene.obj_geom].any()            # never on the moving box
        assert not (static & gt["hidden"][:, 1:]).any()                   # never while truly hidden
        assert not (static & moved).any()                                 # never a point that truly moved
        assert (res.tracks[qi][static] == 0).all()                        # sensor depth: dd exactly 0 too
        table = (gt["geom"] == 0)[:, None] & gt["visible"][:, 1:]
        assert (off.valid[qi] & table).sum() < 0.4 * table.sum()          # tracked only: ~30 %
        assert (res.valid[qi] & table).sum() > 0.7 * table.sum()          # with static inference: ~80 %


def test_static_points_zero_motion_and_the_moving_square_never_static():
    rgb, depth, xs = shadow_plane(frames=16, size=64, speed=1.5)
    res = compute_flow(rgb, [0], depth, steps=12, grid=16)
    pts = grid_points(64, 64, 16)
    static = res.valid_code[0] == STATIC
    assert static[:, 0].sum() > 150 and (res.tracks[0][static] == 0).all()
    on_square = (pts[:, 1] > 23) & (pts[:, 1] < 40) & (pts[:, 0] > xs[0] - 0.5) & (pts[:, 0] < xs[0] + 16)
    assert not static[on_square].any()
    rx, ry = np.rint(pts[:, 0]), np.rint(pts[:, 1])
    for s in range(12):  # a static entry never had the square (rows 24..39) within 4 px of its pixel
        near = (ry >= 20) & (ry <= 43) & (rx >= xs[0] - 4) & (rx <= xs[s + 1] + 15 + 4)
        assert not static[near, s].any()


def test_shadow_ends_static_run_unless_image_check_off():
    rgb, depth, _ = shadow_plane(frames=16, size=64, speed=0.0, shadow_from=6)
    pts = grid_points(64, 64, 16)
    shaded = (pts[:, 0] > 36) & ((pts[:, 1] < 18) | (pts[:, 1] > 46))
    res = compute_flow(rgb, [0], depth, steps=12, grid=16)
    assert (res.valid_code[0][shaded, :5] == STATIC).all() and not res.valid[0][shaded, 5:].any()
    depth_only = compute_flow(rgb, [0], depth, steps=12, grid=16, static_threshold=None)
    assert (depth_only.valid_code[0][shaded] == STATIC).all()


def test_static_needs_steady_depth_and_a_valid_mode():
    rgb = np.full((10, 32, 32, 3), 100, np.uint8)
    drift = np.ones((10, 32, 32), np.float32) * (1.0 + 0.004 * np.arange(10))[:, None, None]
    res = compute_flow(rgb, [0], drift, steps=8, grid=4)
    assert (res.valid_code[0][:, :2] == STATIC).all() and not res.valid[0][:, 2:].any()   # 1.2 % > 1 % at step 3
    assert not compute_flow(rgb, [0], None, steps=8, grid=4).valid.any()                # no depth: nothing inferred
    assert not compute_flow(rgb, [0], drift, steps=8, grid=4, static="off").valid.any()
    with pytest.raises(ValueError, match="static 'sometimes'.*'infer'"):
        compute_flow(rgb, [0], drift, steps=8, grid=4, static="sometimes")
    with pytest.raises(ValueError, match="static rule"):
        StaticRule(depth_tol=-1.0)


def test_resample_time_warp_ignores_static_points():
    pos = np.zeros((30, 9, 3), np.float32)
    pos[0, :, 0] = np.arange(9) * 0.01                    # one point moves 0.01 per raw step, 29 are static
    ok = np.ones((30, 9), bool)
    _, all_valid = resample_equal_path(pos, ok, 0.025, 8)
    _, moving_valid = resample_equal_path(pos, ok, 0.025, 8, moving=np.arange(30) == 0)
    assert not all_valid[:, 1:].any()                      # 95th pct over all 30 points is 0: no path at all
    assert moving_valid[:, 1:4].all() and not moving_valid[:, 4:].any()   # path 0.08 = 3 steps of 0.025


def test_sample_episode_valid_share_and_lamp_normalisation():
    rgb, depth = sample_camera()
    queries = list(range(0, 80, 8))
    raw_off = compute_flow(rgb, queries, depth, static="off")
    raw = compute_flow(rgb, queries, depth)
    assert raw.valid.mean() > 2.0 * raw_off.valid.mean()                 # ~10 % -> ~27 % on the sample
    norm = compute_flow(rgb, queries, depth, normalize=True)
    assert np.abs(norm.tracks).max() <= 1.0 and (norm.tracks[~norm.valid] == 0).all()
    assert norm.clipped == count_clipped(raw.tracks, raw.valid, LAMP_BOUNDS)
    assert (norm.tracks[norm.valid_code == STATIC][:, :2] == 0).all()    # zero motion maps to 0 (symmetric bounds)


def test_lamp_spec_flow_stage_with_the_demo_depth_model():
    """pipelines/lamp.yaml's flow stage with depth: model (the LIBERO case: no depth in the file)."""
    from motiondata.episode import Episode
    from motiondata.pipeline.registry import build_stage
    from motiondata.pipeline.spec import load_spec

    spec = load_spec(ROOT / "pipelines/lamp.yaml")
    params = next(dict(s) for s in spec.stages if s["name"] == "flow")
    assert params["normalize"] is True and Path(params["depth_model"]).resolve() == DEMO_DEPTH.resolve()
    stage = build_stage({**params, "depth": "model", "steps": 8, "device": "cpu"}).stage
    rgb, _ = sample_camera("demo_4")
    episode = Episode(id="libero_like", source="s", fps=10.0, rgb={"top": rgb[:24]}, depth={})
    item = stage(flow_item(episode, window=8, stride=8))
    for sample in item["samples"]:
        assert sample["flow.depth_source"] == "model:metric"
        tracks, valid = sample["flow.tracks"].astype(np.float32), sample["flow.valid"]
        assert np.abs(tracks).max() <= 1.0 and (tracks[valid == 0] == 0).all() and valid.any()
        assert set(np.unique(valid)) <= {0, 1, 2}


def test_shipped_demo_depth_model_loads_without_pickle_and_is_accurate(monkeypatch):
    files = {p.name: p.stat().st_size for p in DEMO_DEPTH.iterdir()}
    assert set(files) == {"tiny_depth.json", "model.safetensors", "training.json"} and sum(files.values()) < 2 << 20
    import pickle

    import torch

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    load_tiny_depth.cache_clear()
    provider = select_depth("model", False, str(DEMO_DEPTH), "cpu")
    assert isinstance(provider, MonocularDepth) and provider.source == "model:metric"
    for cam in ("top", "angle"):                            # demo_4 was held out of training
        rgb, sensor = sample_camera("demo_4", cam)
        pred = provider.estimate(rgb[::10], None)
        both = (sensor[::10] > 0) & (pred > 0)
        assert pred.shape == sensor[::10].shape and both.sum() > 0.4 * pred.size
        assert np.mean(np.abs(pred[both] / sensor[::10][both] - 1)) < 0.1
        assert ((pred > 0) == (sensor[::10] > 0)).mean() > 0.9   # no depth where the simulator has none


def test_transformers_depth_anything_local_dir(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    backbone = transformers.Dinov2Config(hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                                         intermediate_size=32, image_size=32, patch_size=8,
                                         out_features=["stage1", "stage2", "stage3", "stage4"],
                                         reshape_hidden_states=False)
    config = transformers.DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=16, patch_size=8,
                                              neck_hidden_sizes=[8, 8, 8, 8], fusion_hidden_size=8, head_hidden_size=8)
    torch.manual_seed(0)
    transformers.DepthAnythingForDepthEstimation(config).save_pretrained(tmp_path)
    transformers.DPTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    provider = select_depth("model", False, str(tmp_path), "cpu")
    depth = provider.estimate(np.random.default_rng(0).integers(0, 255, (3, 40, 48, 3), dtype=np.uint8), None)
    assert depth.shape == (3, 40, 48) and depth.dtype == np.float32 and np.isfinite(depth).all()
    assert provider.source == "model:relative"                      # Depth Anything (relative) predicts disparity
    assert MonocularDepth(str(tmp_path), output="depth").source == "model:metric"


def test_train_tiny_depth_writes_a_loadable_model(tmp_path):
    from motiondata.encode.train_tiny_depth import main

    data = depth_hdf5(tmp_path / "d.hdf5")
    out = tmp_path / "depth"
    assert main(["--data", str(data), "--out", str(out), "--steps", "3", "--batch", "2"]) == 0
    report = json.loads((out / "training.json").read_text())
    assert report["steps"] == 3 and report["held_out"] == "demo_1" and "abs_rel" in report
    depth = MonocularDepth(str(out), device="cpu").estimate(np.zeros((2, 32, 32, 3), np.uint8))
    assert depth.shape == (2, 32, 32)
    (out / "tiny_depth.json").write_text(json.dumps({"architecture": "other"}))
    with pytest.raises(ValueError, match="train_tiny_depth"):
        TinyDepthConfig.from_json(out / "tiny_depth.json")
    with pytest.raises(FileNotFoundError, match="depth_model"):
        MonocularDepth(str(tmp_path / "missing")).estimate(np.zeros((1, 8, 8, 3), np.uint8))
