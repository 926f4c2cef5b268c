"""Factories for static-background inference and monocular depth tests.

``plain_mujoco_scene``: the hard case for static inference, rendered by MuJoCo with ground truth: a
plain (textureless) table, a plain box moving along ``factories_flow.object_path`` (left to right,
towards the camera, up, turning) and a light that casts its moving shadow on the table.
``shadow_plane``: a numpy scene of a textureless plane with a textured square moving over it.
``depth_hdf5``: a tiny LIBERO-layout file with rgb + depth per camera (training the demo depth model).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.factories_flow import MujocoScene, object_path, random_texture

PLAIN_XML = """
<mujoco>
  <visual><global offwidth="{size}" offheight="{size}"/><quality shadowsize="2048"/>
    <headlight diffuse="0.3 0.3 0.3" ambient="0.3 0.3 0.3"/></visual>
  <worldbody>
    <light pos="0.3 -0.3 1.5" dir="-0.2 0.2 -1" diffuse="0.7 0.7 0.7" castshadow="true"/>
    <camera name="cam" pos="0 -0.75 0.75" xyaxes="1 0 0 0 0.7071 0.7071" fovy="45"/>
    <geom name="table" type="box" size="1.5 1.5 0.02" pos="0 0.5 -0.02" rgba="0.55 0.5 0.45 1"/>
    <body name="obj" mocap="true" pos="0 0 0.07">
      <geom name="obj" type="box" size="0.07 0.07 0.07" rgba="0.2 0.4 0.8 1"/>
    </body>
  </worldbody>
</mujoco>
"""


def _render(model, data, renderer, cam: int, mode: str) -> np.ndarray:
    import mujoco

    getattr(renderer, f"enable_{mode}_rendering")() if mode != "rgb" else None
    renderer.update_scene(data, cam)
    out = renderer.render().copy()
    getattr(renderer, f"disable_{mode}_rendering")() if mode != "rgb" else None
    if mode == "segmentation":
        out = np.where(out[..., 1] == int(mujoco.mjtObj.mjOBJ_GEOM), out[..., 0], -1)
    return out


def plain_mujoco_scene(frames: int = 24, size: int = 64) -> MujocoScene:
    """Render the plain box over the plain table, with its shadow; geom ids and poses per frame."""
    import mujoco

    model = mujoco.MjModel.from_xml_string(PLAIN_XML.format(size=size))
    data = mujoco.MjData(model)
    cam = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, "cam")
    rgb, depth, seg, gpos, gmat = [], [], [], [], []
    with mujoco.Renderer(model, size, size) as renderer:
        for t in range(frames):
            data.mocap_pos[0], data.mocap_quat[0] = object_path(t, frames)
            mujoco.mj_forward(model, data)
            rgb.append(_render(model, data, renderer, cam, "rgb"))
            depth.append(_render(model, data, renderer, cam, "depth"))
            seg.append(_render(model, data, renderer, cam, "segmentation"))
            gpos.append(data.geom_xpos.copy())
            gmat.append(data.geom_xmat.reshape(-1, 3, 3).copy())
    focal = 0.5 * size / np.tan(np.deg2rad(model.cam_fovy[cam]) / 2)
    obj = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, "obj")
    return MujocoScene(np.stack(rgb), np.stack(depth).astype(np.float32), np.stack(seg).astype(np.int32),
                       np.stack(gpos), np.stack(gmat), data.cam_xpos[cam].copy(),
                       data.cam_xmat[cam].reshape(3, 3).copy(), float(focal), obj, -1)


def shadow_plane(frames: int = 16, size: int = 64, speed: float = 1.5, shadow_from: int | None = None):
    """A flat grey plane (depth 1.0) with a textured 16 px square (depth 0.8) moving right by ``speed``
    px/frame from x = 4; from frame ``shadow_from`` the right half of the plane darkens by 40 grey levels
    (a shadow: appearance changes, geometry does not). Returns ``(frames, depth, square_x0 per frame)``."""
    tex = random_texture(16, seed=3)
    rgb = np.full((frames, size, size, 3), 128, np.uint8)
    depth = np.ones((frames, size, size), np.float32)
    xs = []
    for t in range(frames):
        if shadow_from is not None and t >= shadow_from:
            rgb[t, :, size // 2:] = 88
        x0 = int(round(4 + speed * t))
        xs.append(x0)
        x1 = min(x0 + 16, size)
        if x0 < size:
            rgb[t, 24:40, x0:x1] = tex[:, : x1 - x0]
            depth[t, 24:40, x0:x1] = 0.8
    return rgb, depth, np.array(xs)


def depth_hdf5(path: Path, demos: int = 2, frames: int = 6, size: int = 32) -> Path:
    """``data/demo_<i>/obs/{top,side}_{rgb,depth}``: a bright square on a dark floor, depth 0.5 vs 1.0 m."""
    import h5py

    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        for i in range(demos):
            obs = f.create_group(f"data/demo_{i}/obs")
            for cam in ("top", "side"):
                rgb = np.full((frames, size, size, 3), 40, np.uint8)
                depth = np.ones((frames, size, size), np.float32)
                for t in range(frames):
                    y, x = rng.integers(0, size - 10, 2)
                    rgb[t, y:y + 10, x:x + 10] = 220
                    depth[t, y:y + 10, x:x + 10] = 0.5
                depth[:, :2] = 0.0  # a strip with no depth
                obs[f"{cam}_rgb"], obs[f"{cam}_depth"] = rgb, depth
    return path
