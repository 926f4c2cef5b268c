"""3D scene flow against a MuJoCo simulator's ground truth.

Scene (``tests/factories_flow.mujoco_scene``): a textured table, a textured box on a mocap body moving
left to right, towards the camera and up while turning 25 deg, and a static post that the box passes
behind; 40 frames of RGB + depth + geom ids at 128x128 from a fixed camera (fovy 45 deg). Ground truth:
each grid point's surface point (from the rendered depth and geom id on the query frame) moved rigidly
with its geom and projected with the camera intrinsics (focal from ``model.cam_fovy``).

Bounds asserted (query frames 0, 4, 8; 31 steps; points whose query pixel is not on a geom boundary):
- box points, valid and truly visible: mean EPE < 1.0 px, 95th pct < 3.0 px; all points: mean < 0.5 px;
- dd vs the simulator's depth change of the same surface point: median < 1 mm, 95th pct < 3 mm,
  >= 98 % within 1 cm;
- no point is valid while truly hidden (behind the post or under the moving box);
- at least 60 % of the truly visible box steps and 75 % of all visible steps stay valid.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
mujoco = pytest.importorskip("mujoco")

from motiondata.encode.flow import compute_flow, grid_points
from motiondata.encode.flow_stage import FlowStage
from motiondata.encode.flow_trackers import DisTracker, LucasKanadeTracker
from tests.factories_flow import flow_item, mujoco_scene, mujoco_true_tracks

QUERIES, STEPS, SIZE = (0, 4, 8), 31, 128


@pytest.fixture(scope="module")
def scene():
    try:
        return mujoco_scene(frames=40, size=SIZE)
    except (mujoco.FatalError, RuntimeError, ImportError, OSError) as exc:  # no GL context (EGL/OSMesa)
        pytest.skip(f"MuJoCo rendering unavailable: {exc}")


def boundary_queries(scene, query: int) -> np.ndarray:
    """Grid points whose bilinear footprint spans two geoms on the query frame: ambiguous ground truth."""
    p = grid_points(SIZE, SIZE)
    x0, y0 = np.floor(p[:, 0]).astype(int), np.floor(p[:, 1]).astype(int)
    seg = scene.segment[query]
    ids = np.stack([seg[y0, x0], seg[y0, x0 + 1], seg[y0 + 1, x0], seg[y0 + 1, x0 + 1]], 1)
    return (ids != ids[:, :1]).any(1)


@pytest.fixture(scope="module")
def truth(scene):
    return [mujoco_true_tracks(scene, q, grid_points(SIZE, SIZE), STEPS) for q in QUERIES]


def evaluate(scene, truth, tracker) -> dict[str, np.ndarray]:
    res = compute_flow(scene.frames, list(QUERIES), scene.depth, steps=STEPS, tracker=tracker)
    out = {k: [] for k in ("err", "err_obj", "dd_err", "valid_hidden", "vis", "vis_obj", "hidden_obj")}
    for qi, q in enumerate(QUERIES):
        gt, keep = truth[qi], ~boundary_queries(scene, q)
        pv, vis, hid = res.position_valid[qi][keep], gt["visible"][keep], gt["hidden"][keep]
        obj = (gt["geom"][keep] == scene.obj_geom)[:, None]
        err = np.linalg.norm(res.positions[qi][keep][..., :2] * SIZE - 0.5 - gt["xy"][keep], axis=-1)
        dd_true = np.diff(gt["depth"][keep], axis=1)
        dv = res.valid[qi][keep] & vis[:, 1:] & obj
        out["err"].append(err[pv & vis])
        out["err_obj"].append(err[pv & vis & obj])
        out["dd_err"].append(np.abs(res.tracks[qi][keep][..., 2] - dd_true)[dv])
        out["valid_hidden"].append(np.array([(pv & hid).sum()]))
        out["vis"].append(np.array([(pv & vis).sum(), vis.sum()]))
        out["vis_obj"].append(np.array([(pv & vis & obj).sum(), (vis & obj).sum()]))
        out["hidden_obj"].append(np.array([(hid & obj).sum()]))
    return {k: np.concatenate(v) if k.startswith(("err", "dd")) else np.sum(v, axis=0) for k, v in out.items()}


@pytest.mark.parametrize("tracker", [LucasKanadeTracker(), DisTracker()], ids=["lk", "dis"])
def test_mujoco_tracks_depth_and_occlusion(scene, truth, tracker):
    m = evaluate(scene, truth, tracker)
    assert len(m["err_obj"]) > 300 and m["hidden_obj"][0] > 20          # the box moves and gets hidden
    assert m["err_obj"].mean() < 1.0 and np.percentile(m["err_obj"], 95) < 3.0, m["err_obj"].mean()
    assert m["err"].mean() < 0.5
    assert np.median(m["dd_err"]) < 0.001 and np.percentile(m["dd_err"], 95) < 0.003
    assert (m["dd_err"] < 0.01).mean() >= 0.98
    assert m["valid_hidden"][0] == 0
    assert m["vis_obj"][0] >= 0.6 * m["vis_obj"][1] and m["vis"][0] >= 0.75 * m["vis"][1]


def test_mujoco_stage_on_episode(scene):
    from motiondata.episode import Episode

    episode = Episode(id="mj", source="mujoco", fps=20.0, rgb={"cam": scene.frames}, depth={"cam": scene.depth})
    item = FlowStage(steps=16, normalize=True)(flow_item(episode, window=16, stride=8))
    for sample in item["samples"]:
        assert sample["flow.depth_source"] == "sensor" and sample["flow.tracks"].shape == (400, 16, 3)
        tracks = sample["flow.tracks"].astype(np.float32)
        assert np.abs(tracks).max() <= 1.0 and (tracks[sample["flow.valid"] == 0] == 0).all()
    first = item["samples"][0]
    assert first["flow.valid"][:, -1].mean() > 0.5
