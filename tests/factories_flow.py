"""Synthetic scenes with known motion for the scene-flow tests and benchmark.

``textured_plane`` renders a random texture moved by a known affine motion per frame (translation and
rotation about the image centre) with ``cv2.warpAffine``, so the true track of any pixel is known, plus
a depth map (constant or a tilted plane fixed in the image).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class PlaneScene:
    frames: np.ndarray   # (T, H, W, 3) uint8
    depth: np.ndarray    # (T, H, W) float32
    motions: np.ndarray  # (T, 2, 3) affine: texture point b (big-texture pixel) -> frame-t pixel
    depth_coeffs: tuple[float, float, float]  # d(x, y) = c0 + c1 * x + c2 * y

    def true_tracks(self, query: int, xy: np.ndarray, steps: int) -> np.ndarray:
        """Ground-truth pixel positions ``(N, steps+1, 2)`` of ``xy`` on frame ``query``."""
        inv = cv2.invertAffineTransform(self.motions[query])
        base = xy @ inv[:, :2].T + inv[:, 2]
        out = []
        for k in range(steps + 1):
            m = self.motions[min(query + k, len(self.motions) - 1)]
            out.append(base @ m[:, :2].T + m[:, 2])
        return np.stack(out, axis=1).astype(np.float32)

    def true_depth(self, xy: np.ndarray) -> np.ndarray:
        c0, c1, c2 = self.depth_coeffs
        return (c0 + c1 * xy[..., 0] + c2 * xy[..., 1]).astype(np.float32)


def random_texture(size: int, seed: int = 0, sigma: float = 1.2) -> np.ndarray:
    """A band-limited random texture, ``(size, size, 3) uint8`` (LK and DIS need texture)."""
    rng = np.random.default_rng(seed)
    layers = []
    for _ in range(3):
        g = cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0), sigma)
        coarse = cv2.resize(rng.random((size // 16, size // 16)).astype(np.float32), (size, size),
                            interpolation=cv2.INTER_CUBIC)
        g = (g - g.mean()) / g.std() + 0.5 * (coarse - coarse.mean()) / (coarse.std() + 1e-6)
        layers.append(np.clip(128 + 35 * g, 0, 255))
    return np.stack(layers, axis=-1).astype(np.uint8)


def blob_texture(size: int, cells: int = 12, seed: int = 0) -> np.ndarray:
    """Coarse, high-contrast random blobs ``(size, size, 3) uint8``: survives the minification of a
    small rendered object (a fine texture averages to grey)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (cells, cells, 3)).astype(np.float32)
    return np.clip(cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8)


def plane_motion(t: int, size: int, shift: tuple[float, float], degrees: float) -> np.ndarray:
    """Affine map (2, 3) for frame ``t``: the big texture's centre goes to the frame centre, then the
    texture is rotated by ``t * degrees`` about the frame centre and shifted by ``t * shift`` pixels."""
    c = (size - 1) / 2.0
    m = cv2.getRotationMatrix2D((c, c), t * degrees, 1.0)
    m[:, 2] += np.asarray(shift, np.float64) * t
    return m


def textured_plane(frames: int = 40, size: int = 128, shift: tuple[float, float] = (1.0, 0.5),
                   degrees: float = 0.0, tilt: tuple[float, float] = (0.0, 0.0), seed: int = 0) -> PlaneScene:
    """A textured plane moving by ``shift`` px and ``degrees`` per frame, ``size x size`` frames."""
    big = 3 * size
    tex = random_texture(big, seed)
    offset = np.array([[1.0, 0.0, -size], [0.0, 1.0, -size]])  # big-texture pixel -> centred frame pixel
    motions, out = [], []
    for t in range(frames):
        m = plane_motion(t, size, shift, degrees)
        full = m @ np.vstack([offset, [0.0, 0.0, 1.0]])
        motions.append(full)
        out.append(cv2.warpAffine(tex, full, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
    coeffs = (1.0, float(tilt[0]), float(tilt[1]))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    depth = np.broadcast_to(coeffs[0] + coeffs[1] * xx + coeffs[2] * yy, (frames, size, size))
    return PlaneScene(np.stack(out), np.ascontiguousarray(depth, dtype=np.float32), np.stack(motions), coeffs)


MUJOCO_XML = """
<mujoco>
  <visual><global offwidth="{size}" offheight="{size}"/><quality shadowsize="0"/>
    <headlight diffuse="0.5 0.5 0.5" ambient="0.3 0.3 0.3"/></visual>
  <asset>
    <texture name="table" type="2d" file="table.png"/>
    <texture name="obj" type="2d" file="obj.png"/>
    <material name="table" texture="table" texrepeat="4 4"/>
    <material name="obj" texture="obj" texrepeat="1 1" texuniform="false"/>
    <material name="post" texture="table" texrepeat="1 1"/>
  </asset>
  <worldbody>
    <light pos="0 -0.5 2" dir="0 0.3 -1" diffuse="0.8 0.8 0.8" castshadow="false"/>
    <light pos="0 0 2" dir="0 0 -1" diffuse="0.4 0.4 0.4" castshadow="false"/>
    <camera name="cam" pos="0 -0.75 0.75" xyaxes="1 0 0 0 0.7071 0.7071" fovy="45"/>
    <geom name="table" type="box" size="1.5 1.5 0.02" pos="0 0.5 -0.02" material="table"/>
    <geom name="occluder" type="box" size="0.035 0.035 0.12" pos="{occ_x} -0.22 0.12" material="post"/>
    <body name="obj" mocap="true" pos="0 0 0.07">
      <geom name="obj" type="box" size="0.07 0.07 0.07" material="obj"/>
    </body>
  </worldbody>
</mujoco>
"""


@dataclass
class MujocoScene:
    frames: np.ndarray    # (T, H, W, 3) uint8
    depth: np.ndarray     # (T, H, W) float32 metres (z-depth)
    segment: np.ndarray   # (T, H, W) int32 geom id (-1 background)
    geom_pos: np.ndarray  # (T, G, 3) world positions of every geom
    geom_mat: np.ndarray  # (T, G, 3, 3) world rotations
    cam_pos: np.ndarray   # (3,)
    cam_mat: np.ndarray   # (3, 3) columns: camera x (right), y (up), z (backward) in world
    focal: float          # pixels
    obj_geom: int
    occluder_geom: int

    def project(self, world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (..., 3) -> pixel (..., 2) (pixel centres at integers, y down) and z-depth (...)."""
        cam = (world - self.cam_pos) @ self.cam_mat
        z = -cam[..., 2]
        h, w = self.frames.shape[1:3]
        x = w / 2 + self.focal * cam[..., 0] / z - 0.5
        y = h / 2 - self.focal * cam[..., 1] / z - 0.5
        return np.stack([x, y], -1), z

    def unproject(self, xy: np.ndarray, z: np.ndarray) -> np.ndarray:
        h, w = self.frames.shape[1:3]
        cx = (xy[..., 0] + 0.5 - w / 2) * z / self.focal
        cy = -(xy[..., 1] + 0.5 - h / 2) * z / self.focal
        cam = np.stack([cx, cy, -z], -1)
        return cam @ self.cam_mat.T + self.cam_pos


def object_path(t: int, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Known mocap trajectory: left to right, towards the camera, slightly up, with a yaw turn."""
    a = t / max(frames - 1, 1)
    pos = np.array([-0.28 + 0.5 * a, 0.12 - 0.2 * a, 0.14 + 0.04 * a])
    yaw = np.deg2rad(25.0) * a
    return pos, np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])


def mujoco_scene(frames: int = 40, size: int = 128, occluder_x: float = 0.1) -> MujocoScene:
    """Render the moving textured box over a textured table, past a static post, from a fixed camera."""
    import mujoco

    assets = {"table.png": cv2.imencode(".png", random_texture(256, seed=1, sigma=1.5))[1].tobytes(),
              "obj.png": cv2.imencode(".png", blob_texture(128, cells=12, seed=2))[1].tobytes()}
    model = mujoco.MjModel.from_xml_string(MUJOCO_XML.format(size=size, occ_x=occluder_x), assets)
    data = mujoco.MjData(model)
    cam = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, "cam")
    rgb, depth, seg, gpos, gmat = [], [], [], [], []
    with mujoco.Renderer(model, size, size) as renderer:
        for t in range(frames):
            data.mocap_pos[0], data.mocap_quat[0] = object_path(t, frames)
            mujoco.mj_forward(model, data)
            renderer.update_scene(data, cam)
            rgb.append(renderer.render().copy())
            renderer.enable_depth_rendering()
            renderer.update_scene(data, cam)
            depth.append(renderer.render().copy())
            renderer.disable_depth_rendering()
            renderer.enable_segmentation_rendering()
            renderer.update_scene(data, cam)
            ids = renderer.render()
            seg.append(np.where(ids[..., 1] == int(mujoco.mjtObj.mjOBJ_GEOM), ids[..., 0], -1))
            renderer.disable_segmentation_rendering()
            gpos.append(data.geom_xpos.copy())
            gmat.append(data.geom_xmat.reshape(-1, 3, 3).copy())
    focal = 0.5 * size / np.tan(np.deg2rad(model.cam_fovy[cam]) / 2)
    return MujocoScene(np.stack(rgb), np.stack(depth).astype(np.float32), np.stack(seg).astype(np.int32),
                       np.stack(gpos), np.stack(gmat), data.cam_xpos[cam].copy(),
                       data.cam_xmat[cam].reshape(3, 3).copy(), float(focal),
                       mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, "obj"),
                       mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, "occluder"))


def mujoco_true_tracks(scene: MujocoScene, query: int, xy: np.ndarray, steps: int) -> dict[str, np.ndarray]:
    """Ground truth for pixels ``xy (N, 2)`` on frame ``query``: the surface point seen there (from the
    rendered depth and geom id) moved rigidly with its geom. Returns ``xy (N, steps+1, 2)``, ``depth``,
    ``visible`` (in frame and not hidden) and ``hidden`` (something nearer covers it) per step, ``geom``."""
    t_q = query
    ix = np.clip(np.rint(xy).astype(int), 0, scene.frames.shape[2] - 1)
    z0 = scene.depth[t_q, ix[:, 1], ix[:, 0]]
    geom = scene.segment[t_q, ix[:, 1], ix[:, 0]]
    world0 = scene.unproject(xy, z0)
    g = np.maximum(geom, 0)
    local = np.einsum("nji,nj->ni", scene.geom_mat[t_q, g], world0 - scene.geom_pos[t_q, g])
    h, w = scene.frames.shape[1:3]
    out_xy, out_d, vis, hid = [], [], [], []
    for k in range(steps + 1):
        t = min(t_q + k, len(scene.frames) - 1)
        world = np.einsum("nij,nj->ni", scene.geom_mat[t, g], local) + scene.geom_pos[t, g]
        p, d = scene.project(world)
        inside = (p[:, 0] >= 0) & (p[:, 1] >= 0) & (p[:, 0] <= w - 1) & (p[:, 1] <= h - 1)
        pi = np.clip(np.rint(p).astype(int), 0, [w - 1, h - 1])
        seen = scene.depth[t, pi[:, 1], pi[:, 0]]
        hidden = inside & (seen < d - 0.01)
        out_xy.append(p), out_d.append(d), vis.append(inside & ~hidden & (geom >= 0)), hid.append(hidden)
    return {"xy": np.stack(out_xy, 1).astype(np.float32), "depth": np.stack(out_d, 1).astype(np.float32),
            "visible": np.stack(vis, 1), "hidden": np.stack(hid, 1), "geom": geom}


def plane_episode(frames: int = 40, size: int = 64, with_depth: bool = True, shift=(1.0, 0.5), **kw):
    """An :class:`~motiondata.episode.Episode` of a translating textured plane (camera ``front``)."""
    from motiondata.episode import Episode

    scene = textured_plane(frames=frames, size=size, shift=shift, **kw)
    depth = {"front": scene.depth.copy()} if with_depth else {}
    return Episode(id="plane", source="synthetic", fps=10.0, rgb={"front": scene.frames}, depth=depth), scene


def flow_item(episode, window: int = 8, stride: int = 4) -> dict:
    """A stage item with planned windows and empty samples."""
    from motiondata.pipeline.stage import plan_windows

    windows = plan_windows(episode.length, window, stride)
    return {"episode": episode, "windows": windows, "samples": [{"__key__": f"w{w.index}"} for w in windows],
            "episode_fields": {}}


def still_model():
    """A "learned tracker" in CoTracker's calling convention that predicts no motion (for plumbing tests)."""
    import torch

    def model(video, queries):
        t, n = video.shape[1], queries.shape[1]
        tracks = queries[:, None, :, 1:].expand(1, t, n, 2).clone()
        return tracks, torch.ones(1, t, n, dtype=torch.bool)

    return model
