"""3D scene flow on scenes with known motion (a textured plane moved by cv2.warpAffine), plus the
depth providers, trackers, stage contract and options.

Accuracy bounds asserted below (pixels, over valid steps of points whose true track stays inside):
- translation (1.0, 0.5) px/frame, 32 steps: mean EPE < 0.15, 95th pct < 0.5 (LK and DIS);
- rotation 1 deg/frame about the centre (32 deg in all): mean < 0.6, 95th pct < 1.5;
- translation + 0.5 deg/frame: mean < 0.5, 95th pct < 1.2;
- valid coverage of points that truly stay inside: >= 95 %; dd on a tilted plane: |error| < 2 mm.
"""

from __future__ import annotations

import numpy as np
import pytest

from motiondata.encode.flow import (
    LAMP_BOUNDS,
    compute_flow,
    grid_points,
    has_motion,
    normalize_tracks,
    occluder_depth,
    resample_equal_path,
    sample_depth,
)
from motiondata.encode.flow_depth import (
    MonocularDepth,
    NoDepth,
    SensorDepth,
    disparity_to_depth,
    select_depth,
)
from motiondata.encode.flow_stage import FlowStage
from motiondata.encode.flow_trackers import (
    DisTracker,
    LearnedTracker,
    LucasKanadeTracker,
    make_tracker,
)
from tests.factories_flow import flow_item, plane_episode, textured_plane

SIZE, STEPS = 128, 32
TRACKERS = {"lk": LucasKanadeTracker(), "dis": DisTracker()}


def to_pixels(positions: np.ndarray, size: int = SIZE) -> np.ndarray:
    return positions[..., :2] * size - 0.5


def epe_stats(scene, result, qi: int, query: int, margin: float = 1.0):
    """EPE over valid steps, the truly-inside mask, and the true tracks."""
    gt = scene.true_tracks(query, grid_points(SIZE, SIZE), STEPS)
    inside = np.logical_and.accumulate(((gt >= margin + 0.5) & (gt <= SIZE - 1.5 - margin)).all(-1), axis=1)
    err = np.linalg.norm(to_pixels(result.positions[qi]) - gt, axis=-1)
    return err[result.position_valid[qi] & inside], inside, gt


def test_grid_points_layout():
    pts = grid_points(48, 64, 20)
    assert pts.shape == (400, 2) and pts.dtype == np.float32
    u, v = (pts[:, 0] + 0.5) / 64, (pts[:, 1] + 0.5) / 48
    assert np.allclose(u[:20], (np.arange(20) + 0.5) / 20) and np.allclose(v[::20], (np.arange(20) + 0.5) / 20)


@pytest.mark.parametrize("tracker", ["lk", "dis"])
@pytest.mark.parametrize("shift,degrees,mean_max,p95_max", [
    ((1.0, 0.5), 0.0, 0.15, 0.5), ((0.0, 0.0), 1.0, 0.6, 1.5), ((1.5, -0.7), 0.5, 0.5, 1.2)])
def test_plane_epe(tracker, shift, degrees, mean_max, p95_max):
    scene = textured_plane(frames=40, size=SIZE, shift=shift, degrees=degrees, tilt=(0.002, 0.001))
    res = compute_flow(scene.frames, [0, 6], scene.depth, steps=STEPS, tracker=TRACKERS[tracker])
    for qi, q in enumerate([0, 6]):
        err, inside, _ = epe_stats(scene, res, qi, q)
        assert err.mean() < mean_max, f"{tracker} mean EPE {err.mean():.3f}"
        assert np.percentile(err, 95) < p95_max, f"{tracker} p95 EPE {np.percentile(err, 95):.3f}"
        assert (res.position_valid[qi] & inside).sum() >= 0.95 * inside.sum()


@pytest.mark.parametrize("tracker", ["lk", "dis"])
def test_points_leaving_frame_are_invalid_and_zero(tracker):
    scene = textured_plane(frames=40, size=SIZE, shift=(2.0, 1.0))
    res = compute_flow(scene.frames, [0], scene.depth, steps=STEPS, tracker=TRACKERS[tracker], margin=2.0)
    gt = scene.true_tracks(0, grid_points(SIZE, SIZE), STEPS)
    outside = ((gt < 0.5) | (gt > SIZE - 1.5)).any(-1)  # closer than 1 px to the border (margin 2 minus 1 px slack)
    assert outside.any(axis=1).sum() > 50  # the test means something: many points leave
    assert not (res.position_valid[0] & outside).any()
    assert not (res.valid[0] & outside[:, 1:]).any()
    assert (res.tracks[0][~res.valid[0]] == 0).all()
    # once invalid, always invalid
    v = res.valid[0].astype(int)
    assert (np.diff(v, axis=1) <= 0).all()


def test_tilted_plane_depth_deltas_match():
    scene = textured_plane(frames=40, size=SIZE, shift=(1.0, 0.5), tilt=(0.002, 0.001))
    res = compute_flow(scene.frames, [0], scene.depth, steps=STEPS)
    gt = scene.true_tracks(0, grid_points(SIZE, SIZE), STEPS)
    dd_true = np.diff(scene.true_depth(gt), axis=1)
    err = np.abs(res.tracks[0][..., 2] - dd_true)[res.valid[0]]
    assert err.max() < 0.002
    du_px = res.tracks[0][..., 0][res.valid[0]] * SIZE
    assert abs(du_px.mean() - 1.0) < 0.01 and np.percentile(np.abs(du_px - 1.0), 95) < 0.3


def test_no_depth_channel_is_zero_and_not_required():
    scene = textured_plane(frames=40, size=64, shift=(1.0, 0.0))
    res = compute_flow(scene.frames, [0], None, steps=16)
    assert (res.tracks[..., 2] == 0).all() and res.valid.mean() > 0.6


def test_invalid_depth_and_depth_jump_invalidate():
    scene = textured_plane(frames=30, size=64, shift=(0.0, 0.0))
    depth = scene.depth.copy()
    depth[:, :, :20] = 0.0                 # no depth on the left
    depth[10:, :, 40:] = 0.6               # a nearer surface appears on the right from frame 10
    depth[:, 30:34, 20:40] = np.nan        # a band of NaN
    res = compute_flow(scene.frames, [0], depth, steps=16)
    pts = grid_points(64, 64)
    left, right = pts[:, 0] < 19, pts[:, 0] > 45
    band = (pts[:, 1] > 29) & (pts[:, 1] < 34) & (pts[:, 0] > 19.5) & (pts[:, 0] < 39.5)  # nearest px is NaN
    assert not res.position_valid[0][left].any() and not res.position_valid[0][band].any()
    assert res.position_valid[0][right, :10].all() and not res.position_valid[0][right, 10:].any()
    middle = ~left & ~right & ~band & (pts[:, 0] < 34)
    assert res.position_valid[0][middle].all()


def test_sample_depth_masks_and_snaps_at_edges():
    depth = np.array([[[1.0, 1.0, 2.0], [1.0, 0.0, 2.0], [1.0, 1.0, 2.0]]], np.float32)
    t = np.zeros(3, int)
    d, ok = sample_depth(depth, t, np.array([[0.5, 0.0], [1.2, 0.0], [0.25, 1.0]], np.float32))
    assert ok.all()
    assert d[0] == pytest.approx(1.0)      # blend of equal depths
    assert d[1] == pytest.approx(1.0)      # 1 vs 2 is an edge: the nearest neighbour, not 1.2
    assert d[2] == pytest.approx(1.0)      # invalid neighbour gets no weight
    d, ok = sample_depth(depth, np.zeros(1, int), np.array([[1.0, 1.0]], np.float32))
    assert not ok[0] and d[0] == 0
    near = occluder_depth(np.array([[[1.0, 1.0, 2.0, 2.0, 2.0]]], np.float32), 0.03, radius=1)
    assert near[0, 0, 0] == near[0, 0, 2] == 1.0 and np.isinf(near[0, 0, 3:]).all()


def test_occluder_drags_are_caught_by_edge_radius():
    """A point beside a nearer edge inside the occlusion radius is invalid; a slanted plane is not an edge."""
    scene = textured_plane(frames=10, size=64, shift=(0.0, 0.0), tilt=(0.01, 0.01))
    depth = scene.depth.copy()
    depth[:, :, 30:] -= 0.5
    res = compute_flow(scene.frames, [0], depth, steps=4, grid=8, occlusion_radius=4, static="off")
    x = grid_points(64, 64, 8)[:, 0]
    behind = (x > 25) & (x < 29)
    assert not res.position_valid[0][behind].any()      # behind the edge, within 4 px
    assert res.position_valid[0][(x < 24) | (x > 30)].all()
    # nothing in the scene changes, so the static rule (default) keeps those points, as static (code 2)
    res = compute_flow(scene.frames, [0], depth, steps=4, grid=8, occlusion_radius=4)
    assert (res.valid_code[0][behind] == 2).all() and (res.tracks[0][behind] == 0).all()
    assert (res.valid_code[0][(x < 24) | (x > 30)] == 1).all()


def test_normalize_bounds():
    tracks = np.array([[[0.025, -0.1, 0.04], [0.0, 0.0, -0.02]]], np.float32)
    valid = np.array([[True, False]])
    out = normalize_tracks(tracks, valid, LAMP_BOUNDS)
    assert np.allclose(out[0, 0], [0.5, -1.0, 1.0]) and (out[0, 1] == 0).all()
    with pytest.raises(ValueError, match="bounds"):
        normalize_tracks(tracks, valid, ((0, 0, 0), (0, 1, 1)))


def test_resample_equal_path_constant_velocity():
    scene = textured_plane(frames=80, size=SIZE, shift=(1.0, 0.0))
    res = compute_flow(scene.frames, [0], scene.depth, steps=STEPS, horizon=70, resample_path=0.05,
                       tracker=TRACKERS["dis"])
    valid = res.valid[0]
    live = valid.any(axis=0)
    assert live[:10].all() and not live[11:].any()   # 70 px of path = 0.547 -> 10 full steps of 0.05
    du = res.tracks[0][:, :10, 0][valid[:, :10]]
    assert np.allclose(du, 0.05, atol=0.003)
    assert has_motion(res.tracks[0], valid)


def test_resample_static_scene_has_no_valid_steps():
    pos = np.zeros((4, 9, 3), np.float32)
    out, ok = resample_equal_path(pos, np.ones((4, 9), bool), 0.05, 8)
    assert out.shape == (4, 9, 3) and ok[:, 0].all() and not ok[:, 1:].any()
    assert not has_motion(np.zeros((4, 8, 3), np.float32), ok[:, 1:])


def test_steps_past_episode_end_are_invalid():
    scene = textured_plane(frames=20, size=64)
    res = compute_flow(scene.frames, [12], scene.depth, steps=16)
    assert res.valid[0][:, :7].any() and not res.valid[0][:, 7:].any()


def test_learned_tracker_numpy_oracle_and_cotracker_layout():
    scene = textured_plane(frames=24, size=64, shift=(1.0, 0.0))

    def oracle(clip, queries):
        gt = scene.true_tracks(0, queries[:, 1:], len(clip) - 1)
        return np.moveaxis(gt, 0, 1), np.ones((len(clip), len(queries)), np.float32)

    res = compute_flow(scene.frames, [0], scene.depth, steps=16, tracker=LearnedTracker(oracle, layout="numpy"))
    gt = scene.true_tracks(0, grid_points(64, 64), 16)
    ok = res.position_valid[0]
    assert np.abs(to_pixels(res.positions[0], 64) - gt)[ok].max() < 1e-3 and ok[:, -1].sum() > 200
    still = make_tracker("tests.factories_flow:still_model")
    assert isinstance(still, LearnedTracker)
    res = compute_flow(scene.frames, [0, 20], None, steps=8, tracker=still)
    assert res.valid[0].all() and (res.tracks[0] == 0).all() and not res.valid[1][:, 3:].any()


def test_make_tracker_names():
    assert isinstance(make_tracker("lk", fb_threshold=0.5), LucasKanadeTracker)
    assert make_tracker("dis", preset="medium").preset == "medium"
    assert isinstance(make_tracker("motiondata.encode.flow_trackers:LucasKanadeTracker"), LucasKanadeTracker)
    with pytest.raises(ValueError, match="cannot import"):
        make_tracker("no_such_module:thing")


def test_depth_providers():
    frames = np.zeros((2, 4, 4, 3), np.uint8)
    sensor = np.ones((2, 4, 4), np.float32)
    assert SensorDepth().estimate(frames, sensor) is not None and NoDepth().estimate(frames, sensor) is None
    with pytest.raises(ValueError, match="depth"):
        SensorDepth().estimate(frames, None)
    assert isinstance(select_depth("auto", False, "/some/dir"), MonocularDepth)
    assert select_depth("auto", False, None).source == "missing"
    with pytest.raises(ValueError, match="depth_model"):
        select_depth("model", False, None)
    rel = disparity_to_depth(np.array([[1.0, 2.0, 4.0, 0.0]], np.float32))
    assert np.allclose(rel, [[2.0, 1.0, 0.5, 0.0]])


def tiny_depth_model(path) -> str:
    import torch
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    cfg = DPTConfig(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32, image_size=32,
                    patch_size=8, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 8, 8, 8],
                    fusion_hidden_size=8, reassemble_factors=[4, 2, 1, 0.5])
    torch.manual_seed(0)
    DPTForDepthEstimation(cfg).save_pretrained(path)
    DPTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return str(path)


def test_monocular_depth_from_local_dir_and_stage(tmp_path):
    path = tiny_depth_model(tmp_path / "dpt")
    episode, _ = plane_episode(frames=12, size=32, with_depth=False)
    depth = MonocularDepth(path, device="cpu").estimate(episode.rgb["front"])
    assert depth.shape == (12, 32, 32) and depth.dtype == np.float32 and np.isfinite(depth).all()
    item = FlowStage(steps=4, grid=4, depth_model=path, device="cpu")(flow_item(episode, window=4, stride=4))
    assert {s["flow.depth_source"] for s in item["samples"]} == {"model:relative"}   # DPT predicts disparity
    with pytest.raises(FileNotFoundError, match="depth_model"):
        MonocularDepth(str(tmp_path / "missing")).estimate(episode.rgb["front"])


def test_stage_fields_and_contract():
    episode, _ = plane_episode(frames=40, size=64)
    stage = FlowStage(steps=16)
    item = stage(flow_item(episode, window=8, stride=8))
    assert len(item["samples"]) == 5
    for window, sample in zip(item["windows"], item["samples"]):
        assert sample["flow.tracks"].shape == (400, 16, 3) and sample["flow.tracks"].dtype == np.float16
        assert sample["flow.valid"].shape == (400, 16) and sample["flow.valid"].dtype == np.uint8
        assert sample["flow.query"] == window.start and sample["flow.depth_source"] == "sensor"
        assert (sample["flow.tracks"][sample["flow.valid"] == 0] == 0).all()
    from motiondata.store.manifest import schema_problems
    from motiondata.store.shards import describe_sample

    doc = describe_sample({**item["samples"][0], "meta": {"episode": "plane", "window": 0, "start": 0,
                                                          "length": 8}}, json_values=True)
    doc["__key__"] = "w0"
    assert schema_problems("sample", doc) == []
    last = item["samples"][-1]                       # query 32: only 7 frames left
    assert not last["flow.valid"][:, 7:].any() and last["flow.valid"][:, :7].any()
    assert stage.config_hash() == FlowStage(steps=16).config_hash() != FlowStage().config_hash()


def test_stage_without_depth_normalized_dis_and_camera_choice():
    episode, scene = plane_episode(frames=30, size=64, with_depth=False)
    item = FlowStage(steps=8, tracker="dis", normalize=True)(flow_item(episode, window=8, stride=10))
    s = item["samples"][0]
    assert s["flow.depth_source"] == "missing" and (s["flow.tracks"][..., 2] == 0).all()
    du = s["flow.tracks"][..., 0][s["flow.valid"] == 1].astype(np.float32)
    assert np.allclose(du, (1.0 / 64) / 0.05, atol=0.05)          # normalised by LaMP's 0.05 bound
    from motiondata.episode import Episode

    both = Episode(id="two", source="s", fps=10.0, rgb={"a": scene.frames, "b": scene.frames},
                   depth={"b": scene.depth})
    assert FlowStage().pick_camera(both) == "b"
    with pytest.raises(ValueError, match="camera 'c'"):
        FlowStage(camera="c").pick_camera(both)


def test_stage_param_errors_and_registry():
    with pytest.raises(ValueError, match="steps"):
        FlowStage(steps=0)
    with pytest.raises(ValueError, match="resample_path"):
        FlowStage(horizon=128)
    with pytest.raises(ValueError, match="depth"):
        FlowStage(depth="lidar")
    from motiondata.pipeline.registry import build_stage

    bound = build_stage({"name": "flow", "steps": 8, "tracker": "dis", "resample_path": 0.05, "horizon": 64,
                         "tracker_options": {"preset": "medium"}})
    assert isinstance(bound.stage, FlowStage) and bound.stage.name == "flow"


@pytest.mark.gpu
def test_model_depth_and_learned_tracker_on_cuda(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from tests.factories_flow import still_model

    path = tiny_depth_model(tmp_path / "dpt")
    episode, _ = plane_episode(frames=8, size=32, with_depth=False)
    depth = MonocularDepth(path, device="cuda").estimate(episode.rgb["front"])
    assert depth.shape == (8, 32, 32) and np.isfinite(depth).all()
    res = compute_flow(episode.rgb["front"], [0], depth, steps=4, grid=4,
                       tracker=LearnedTracker(still_model(), device="cuda"))
    assert res.valid.shape == (1, 16, 4)
