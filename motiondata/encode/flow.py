"""3D scene flow (LaMP): a grid of query points tracked over ``S`` steps, as per-step ``(du, dv, dd)``.

Coordinates: pixel ``(x, y)`` with pixel centres at integers; normalised ``u = (x + 0.5) / W``,
``v = (y + 0.5) / H`` (the image spans [0, 1]); ``d`` is camera depth (metres from a sensor, relative
from a monocular model, 0 when missing).

Output per query frame ``q``: ``tracks (N, S, 3)`` with ``tracks[:, s] = p[s+1] - p[s]`` where ``p[0]`` is
the query position on frame ``q`` and ``p[k]`` the position on frame ``q + k`` (or at the ``k``-th
equal-path-length time when resampling); ``valid (N, S)``: delta ``s`` is valid when position ``s+1``
is (and so every position before it). A position is invalid once the tracker lost the point (LK status
0, failed forward-backward check), it left the frame (closer than ``margin`` px to the border), it has no valid
depth (when depth exists), or it is occluded: its depth jumped by more than ``occlusion_threshold``
(relative) since the previous step, or an occluding depth edge nearer than the point by that much lies
within ``occlusion_radius`` px (the tracker's window sees the occluder; LK and DIS then drag the point
along the occluder's silhouette). Once invalid, always invalid; invalid entries are exactly zero.
With ``static="infer"`` (default; needs depth) a point the tracker lost on a textureless, unchanged,
depth-steady neighbourhood is valid as static background with zero ``(du, dv)`` (``flow_static``);
``valid_code`` tells tracked (1) from static-inferred (2) entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from motiondata.encode.flow_static import StaticRule, check_mode, prefer_static, static_validity, validity_code
from motiondata.encode.flow_trackers import LucasKanadeTracker, Tracker

LAMP_BOUNDS = ((-0.05, -0.05, -0.04), (0.05, 0.05, 0.04))


@dataclass
class FlowResult:
    """``tracks (Q, N, S, 3) float32`` deltas; ``valid (Q, N, S) bool`` (tracked or static-inferred);
    ``positions (Q, N, S+1, 3)`` absolute ``(u, v, d)`` and ``position_valid (Q, N, S+1)``, all zero where
    invalid; ``valid_code`` says how each valid delta was obtained (store it as ``flow.valid``)."""

    tracks: np.ndarray
    valid: np.ndarray
    positions: np.ndarray
    position_valid: np.ndarray
    query_frames: np.ndarray
    valid_code: np.ndarray  # (Q, N, S) uint8: 0 invalid, 1 tracked, 2 static-inferred (``flow_static``)
    clipped: int = 0  # entries that ``normalize`` clipped to +-1


def grid_points(height: int, width: int, grid: int = 20) -> np.ndarray:
    """``(grid*grid, 2) float32`` pixel ``(x, y)`` at the cell centres of a ``grid x grid`` partition,
    row-major (index ``i = row * grid + col``, row along ``y``); ``u = (col + 0.5) / grid``."""
    cx = (np.arange(grid, dtype=np.float32) + 0.5) * width / grid - 0.5
    cy = (np.arange(grid, dtype=np.float32) + 0.5) * height / grid - 0.5
    xx, yy = np.meshgrid(cx, cy)
    return np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.float32)


def in_frame(xy: np.ndarray, height: int, width: int, margin: float) -> np.ndarray:
    """At least ``margin`` px inside the image border (the image spans ``[-0.5, W - 0.5]``)."""
    x, y = xy[..., 0], xy[..., 1]
    lo = margin - 0.5
    return ((x >= lo) & (y >= lo) & (x <= width - 0.5 - margin) & (y <= height - 0.5 - margin)
            & np.isfinite(x) & np.isfinite(y))


def sample_depth(depth: np.ndarray, t: np.ndarray, xy: np.ndarray,
                 edge: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Masked bilinear depth of ``depth (T, H, W)`` at frames ``t (...)`` and pixels ``xy (..., 2)``.

    Invalid neighbours (0, NaN, inf) get no weight. Across a depth discontinuity (neighbours differ by
    more than ``edge`` x depth) the nearest valid neighbour is used instead of a blend of two surfaces.
    Returns ``(d, ok)``, ``ok`` when the nearest neighbour is valid; ``d`` is 0 where not ok."""
    _, h, w = depth.shape
    x = np.clip(np.nan_to_num(xy[..., 0]), 0, w - 1)
    y = np.clip(np.nan_to_num(xy[..., 1]), 0, h - 1)
    x0 = np.minimum(np.floor(x).astype(np.int64), max(w - 2, 0))
    y0 = np.minimum(np.floor(y).astype(np.int64), max(h - 2, 0))
    fx, fy = x - x0, y - y0
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    vals = np.stack([depth[t, y0, x0], depth[t, y0, x1], depth[t, y1, x0], depth[t, y1, x1]], axis=-1)
    wts = np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], axis=-1)
    good = np.isfinite(vals) & (vals > 0)
    vals = np.where(good, vals, 0.0)
    wg = np.where(good, wts, 0.0)
    bilinear = (wg * vals).sum(-1) / np.maximum(wg.sum(-1), 1e-12)
    nearest_i = np.argmax(wts, axis=-1)[..., None]
    nearest = np.take_along_axis(vals, nearest_i, -1)[..., 0]
    ok = np.take_along_axis(good, nearest_i, -1)[..., 0]
    spread = np.where(good, vals, -np.inf).max(-1) - np.where(good, vals, np.inf).min(-1)
    d = np.where(spread > edge * nearest, nearest, bilinear)
    return np.where(ok, d, 0.0).astype(np.float32), ok


def occluder_depth(depth: np.ndarray, threshold: float, radius: int) -> np.ndarray:
    """Per frame, the depth of the nearest occluding edge within ``radius`` px (``inf`` where none).

    An occluding-edge pixel is the near side of a depth discontinuity: a 4-neighbour lies farther by
    more than ``threshold`` x depth. Slanted surfaces (a table seen at an angle) change depth smoothly
    and produce no edges, so only real occluders count."""
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    square = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8) if radius > 0 else None
    out = np.empty(depth.shape, np.float32)
    for i, frame in enumerate(depth):
        clean = np.where(np.isfinite(frame) & (frame > 0), frame, np.inf).astype(np.float32)
        farthest = cv2.dilate(clean, cross, borderType=cv2.BORDER_REPLICATE)
        near = np.where(farthest > clean * (1.0 + threshold), clean, np.inf).astype(np.float32)
        out[i] = cv2.erode(near, square, borderType=cv2.BORDER_REPLICATE) if square is not None else near
    return out


def point_depth(depth: np.ndarray, query_frames: np.ndarray, xy: np.ndarray, edge: float,
                radius: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Depth along tracks ``xy (Q, N, K+1, 2)`` (frame of step ``k`` is ``q + k``, clipped; steps past
    the end are invalid anyway). Returns ``(d, ok, front)``; ``front`` marks points with an occluding
    edge nearer by more than ``edge`` x ``d`` within ``radius`` px: the tracker's window sees an
    occluder, so the point is (about to be) occluded or is being dragged along its silhouette."""
    k = np.arange(xy.shape[2])
    t = np.clip(query_frames[:, None] + k[None], 0, len(depth) - 1)[:, None, :]
    t = np.broadcast_to(t, xy.shape[:3])
    d, ok = sample_depth(depth, t, xy, edge)
    used = np.unique(t)
    near = occluder_depth(depth[used], edge, radius)
    _, h, w = depth.shape
    xi = np.clip(np.rint(np.nan_to_num(xy[..., 0])), 0, w - 1).astype(np.int64)
    yi = np.clip(np.rint(np.nan_to_num(xy[..., 1])), 0, h - 1).astype(np.int64)
    front = ok & (d - near[np.searchsorted(used, t), yi, xi] > edge * d)
    return d, ok, front


def track_validity(xy: np.ndarray, ok: np.ndarray, d: np.ndarray | None, d_ok: np.ndarray | None,
                   front: np.ndarray | None, shape: tuple[int, int], margin: float,
                   occlusion_threshold: float) -> np.ndarray:
    """Cumulative validity ``(Q, N, K+1)`` from tracker status, frame bounds, depth and occlusion."""
    valid = ok & in_frame(xy, shape[0], shape[1], margin)
    if d is not None:
        valid &= d_ok & ~front
        jump = np.zeros_like(valid)
        prev = d[..., :-1]
        jump[..., 1:] = np.abs(d[..., 1:] - prev) > occlusion_threshold * np.maximum(prev, 1e-6)
        valid &= ~jump
    return np.logical_and.accumulate(valid, axis=-1)


def resample_equal_path(pos: np.ndarray, valid: np.ndarray, step: float, steps: int,
                        moving: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Resample one query frame's tracks ``pos (N, K+1, 3)`` in time so that consecutive samples are
    ``step`` apart in scene path length (normalised image units). Scene motion per raw step is the
    95th percentile over valid points of ``|d(u, v)|``; all points share the time warp, so the grid stays
    simultaneous. ``moving (N,)``: the points that take part in the 95th percentile (static-inferred
    points are left out, so a mostly-static grid does not slow the clock). Returns ``(N, steps+1, 3)``
    and validity; samples past the path's end are invalid."""
    n, k1, _ = pos.shape
    disp = np.linalg.norm(np.diff(pos[..., :2], axis=1), axis=-1)
    live = valid[:, 1:] if moving is None else valid[:, 1:] & np.asarray(moving, bool)[:, None]
    motion = np.array([np.percentile(disp[live[:, s], s], 95) if live[:, s].any() else 0.0
                       for s in range(k1 - 1)])
    path = np.concatenate([[0.0], np.cumsum(motion)])
    n_out = min(int(np.floor(path[-1] / step + 1e-9)) + 1, steps + 1)
    times = np.array([_path_time(path, j * step) for j in range(n_out)])
    lo = np.floor(times).astype(np.int64)
    frac = (times - lo).astype(np.float32)
    hi = np.where(frac > 0, np.minimum(lo + 1, k1 - 1), lo)
    out = np.zeros((n, steps + 1, 3), np.float32)
    out_valid = np.zeros((n, steps + 1), bool)
    out[:, :n_out] = pos[:, lo] * (1 - frac)[None, :, None] + pos[:, hi] * frac[None, :, None]
    out_valid[:, :n_out] = valid[:, hi]
    return out, out_valid


def _path_time(path: np.ndarray, target: float) -> float:
    """Fractional raw step at which the cumulative ``path`` first reaches ``target``."""
    i = int(np.searchsorted(path, target, side="left"))
    if i == 0:
        return 0.0
    i = min(i, len(path) - 1)
    if path[i] <= path[i - 1]:
        return float(i)
    return (i - 1) + float(np.clip((target - path[i - 1]) / (path[i] - path[i - 1]), 0.0, 1.0))


def normalize_tracks(tracks: np.ndarray, valid: np.ndarray,
                     bounds: Sequence[Sequence[float]] = LAMP_BOUNDS) -> np.ndarray:
    """Map deltas linearly from ``bounds = (lo, hi)`` to [-1, 1] (clipped); invalid entries stay 0."""
    lo, hi = (np.asarray(b, dtype=np.float32) for b in bounds)
    if lo.shape != (3,) or hi.shape != (3,) or not (hi > lo).all():
        raise ValueError(f"bounds {bounds!r}: give ((du_lo, dv_lo, dd_lo), (du_hi, dv_hi, dd_hi)) with hi > lo")
    out = np.clip(2.0 * (tracks - lo) / (hi - lo) - 1.0, -1.0, 1.0)
    return np.where(valid[..., None], out, 0.0).astype(np.float32)


def count_clipped(tracks: np.ndarray, valid: np.ndarray, bounds: Sequence[Sequence[float]] = LAMP_BOUNDS) -> int:
    """Valid ``(du, dv, dd)`` components outside ``bounds`` (what ``normalize_tracks`` saturates at +-1)."""
    lo, hi = (np.asarray(b, dtype=np.float32) for b in bounds)
    outside = (tracks < lo) | (tracks > hi)
    return int((outside & np.asarray(valid, bool)[..., None]).sum())


def _positions(xy: np.ndarray, d: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    dd = d if d is not None else np.zeros(xy.shape[:-1], np.float32)
    return np.stack([(xy[..., 0] + 0.5) / w, (xy[..., 1] + 0.5) / h, dd], axis=-1).astype(np.float32)


def compute_flow(frames: np.ndarray, query_frames: Sequence[int], depth: np.ndarray | None = None, *,
                 steps: int = 32, grid: int = 20, tracker: Tracker | None = None, margin: float = 1.0,
                 occlusion_threshold: float = 0.03, occlusion_radius: int = 4, horizon: int | None = None,
                 resample_path: float | None = None, normalize: bool = False,
                 bounds: Sequence[Sequence[float]] = LAMP_BOUNDS, static: str = "infer",
                 static_threshold: float | None = 6.0, static_depth_tol: float = 0.01,
                 static_radius: int = 4) -> FlowResult:
    """Scene flow of ``frames (T, H, W, 3) uint8`` for every query frame. ``depth (T, H, W)`` (0/NaN
    invalid) or ``None`` (depth channel 0, not required for validity). ``horizon``: frames tracked
    (default ``steps``; longer horizons make sense with ``resample_path``). ``static="infer"`` (with
    depth) makes unchanged, depth-steady points valid with zero motion (code 2, see ``flow_static``)."""
    q = np.asarray(query_frames, dtype=np.int64).reshape(-1)
    shape = frames.shape[1:3]
    horizon = steps if horizon is None else int(horizon)
    if resample_path is None and horizon != steps:
        raise ValueError(f"horizon ({horizon}) must equal steps ({steps}) unless resample_path is set")
    check_mode(static)
    rule = StaticRule(static_threshold, static_depth_tol, static_radius)
    tracker = tracker or LucasKanadeTracker()
    points = grid_points(*shape, grid)
    res = tracker.track(frames, q, points, horizon)
    xy, d, d_ok, front = res.xy, None, None, None
    if depth is not None:
        d, d_ok, front = point_depth(depth, q, xy, occlusion_threshold, occlusion_radius)
    valid = track_validity(xy, res.ok, d, d_ok, front, shape, margin, occlusion_threshold)
    use_static = np.zeros(valid.shape[:2], bool)
    if static == "infer" and depth is not None and len(q):
        s_ok, s_d = static_validity(frames, depth, q, points, horizon, rule)
        use_static = prefer_static(valid, s_ok, xy, points)
        pick = use_static[..., None]
        valid, d = np.where(pick, s_ok, valid), np.where(pick, s_d, d)
        xy = np.where(pick[..., None], np.broadcast_to(points[None, :, None], xy.shape), xy)
    return _finish(_positions(xy, d, shape), valid, use_static, q, steps, resample_path, normalize, bounds)


def _finish(pos: np.ndarray, valid: np.ndarray, use_static: np.ndarray, q: np.ndarray, steps: int,
            resample_path: float | None, normalize: bool, bounds: Sequence[Sequence[float]]) -> FlowResult:
    """Resample (time warp from tracked points only), zero invalid entries, take deltas, normalise."""
    if resample_path is not None:
        pairs = [resample_equal_path(pos[i], valid[i], resample_path, steps, moving=~use_static[i])
                 for i in range(len(q))]
        pos = np.stack([p for p, _ in pairs]) if pairs else pos[:, :, : steps + 1]
        valid = np.stack([v for _, v in pairs]) if pairs else valid[:, :, : steps + 1]
    pos = np.where(valid[..., None], pos, 0.0).astype(np.float32)
    delta_valid = valid[..., 1:]
    tracks = np.where(delta_valid[..., None], pos[..., 1:, :] - pos[..., :-1, :], 0.0).astype(np.float32)
    clipped = 0
    if normalize:
        clipped = count_clipped(tracks, delta_valid, bounds)
        tracks = normalize_tracks(tracks, delta_valid, bounds)
    return FlowResult(tracks, delta_valid, pos, valid, q, validity_code(delta_valid, use_static), clipped)


def has_motion(tracks: np.ndarray, valid: np.ndarray, threshold: float = 0.01) -> bool:
    """True when some valid point moved more than ``threshold`` (normalised image units) in total;
    LaMP drops samples where no point moves."""
    uv = np.where(valid[..., None], tracks[..., :2], 0.0).astype(np.float32)
    return bool((np.linalg.norm(uv.sum(axis=-2), axis=-1) > threshold).any())
