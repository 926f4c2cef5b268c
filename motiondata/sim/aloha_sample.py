"""Generate the bundled sample dataset: gym-aloha's bimanual transfer-cube scene, written in LIBERO's HDF5 layout.

Run it from a SEPARATE virtualenv (gym-aloha pins its own mujoco/dm-control), from the repository root::

    MUJOCO_GL=egl python -m motiondata.sim.aloha_sample --out data/sample/aloha_sim.hdf5 --episodes 5

Each episode is collected the way ALOHA/ACT collect their scripted sim data, in two passes:

1. End-effector pass: the mocap scene (``bimanual_viperx_end_effector_transfer_cube.xml`` with gym-aloha's
   ``TransferCubeEndEffectorTask``). A scripted waypoint plan moves the two mocap targets (right arm reaches,
   grasps and lifts the cube, carries it to the middle, the left arm takes it); the arms' joint angles are logged.
2. Joint pass: the joint-position scene that ``gym_aloha``'s ``AlohaTransferCube-v0`` runs (``TransferCubeTask``)
   replays those joint angles as 14-d actions. This pass is what is recorded.

Only numpy, h5py, mujoco, dm_control and gym_aloha are imported (plus the stdlib-only store layout helper).
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must be set before dm_control is imported

import h5py
import numpy as np
from dm_control import mujoco
from dm_control.rl import control
from gym_aloha.constants import ASSETS_DIR, DT, FPS, normalize_puppet_gripper_position
from gym_aloha.tasks import sim as aloha_sim
from gym_aloha.tasks.sim_end_effector import BimanualViperXEndEffectorTask, TransferCubeEndEffectorTask
from gym_aloha.utils import sample_box_pose

from motiondata.store.layout import atomic_path

LOG = logging.getLogger(__name__)

INSTRUCTION = "pick up the cube with the right arm and hand it to the left arm"
ENV_NAME = "gym_aloha/AlohaTransferCube-v0"
SIM_STEPS = 400  # ACT's episode length for sim_transfer_cube (8 s at 50 Hz)
EE_BODIES = ("vx300s_left/gripper_link", "vx300s_right/gripper_link")
MAX_REWARD = 4
ARM_JOINTS = [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12]  # in the 14-d ALOHA qpos / action vector
GRIPPERS = [6, 13]
CUBE_REST_Z = 0.02  # the cube's half size: its centre height resting on the table top (z=0)
PICK_HEIGHT = 0.0  # pads centre above the cube centre when grasping (m)
HANDOVER_GAP = 0.02  # left pads centre this far (-x) from the cube centre at the handover (m)
REPLAN_STEP = 230  # the left arm's handover target is re-planned from the measured cube position here
# Stiffer mocap welds than the scene's (0.25, 0.25, 0.001), which let the grippers sag 2-4 cm under gravity; with
# these they follow the plan within about 1 cm. Only the helper mocap scene is changed, never the recorded one.
WELD_SOLIMP = (0.9, 0.95, 0.001)


# ----------------------------------------------------------------------------------------------- quaternions (wxyz)
def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of two wxyz quaternions."""
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return np.array([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw])


def quat_conj(q: np.ndarray) -> np.ndarray:
    return np.asarray(q, dtype=float) * [1, -1, -1, -1]


def quat_rotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate vector ``v`` by the unit wxyz quaternion ``q``."""
    return quat_mul(quat_mul(q, np.concatenate([[0.0], v])), quat_conj(q))[1:]


def axis_quat(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    half = np.deg2rad(degrees) / 2
    return np.concatenate([[np.cos(half)], np.sin(half) * np.asarray(axis, dtype=float)])


# ------------------------------------------------------------------------------------------------------ scripted plan
def grasp_offset(physics, arm: int) -> np.ndarray:
    """The point between the two finger pads of ``arm`` (0 left, 1 right), in its mocap body's frame.

    The scene welds each gripper_link to a mocap body with the relative pose MuJoCo derives at qpos0, so the mocap
    point is not the gripper link; planning the pads' centre makes the plan independent of that offset.
    """
    model, named = physics.model, physics.named.data
    side = ("left", "right")[arm]
    link = f"vx300s_{side}/gripper_link"
    pads = [named.geom_xpos[f"vx300s_{side}/10_{f}_gripper_finger"] for f in ("left", "right")]
    pad_local = quat_rotate(quat_conj(named.xquat[link]), np.mean(pads, axis=0) - named.xpos[link])
    relpos, relquat = model.eq_data[arm, 3:6], model.eq_data[arm, 6:10]
    return relpos + quat_rotate(relquat, pad_local)


def _track(waypoints: list, offset: np.ndarray) -> np.ndarray:
    """(SIM_STEPS, 8) mocap xyz, quat, gripper from (step, pads centre xyz, mocap quat, gripper) waypoints."""
    steps = np.arange(SIM_STEPS)
    values = []
    for _, pads, quat, grip in waypoints:
        quat = np.asarray(quat, dtype=float) / np.linalg.norm(quat)
        values.append(np.concatenate([pads - quat_rotate(quat, offset), quat, [grip]]))
    values = np.array(values)
    times = [w[0] for w in waypoints]
    arm = np.stack([np.interp(steps, times, values[:, j]) for j in range(8)], axis=1)
    arm[:, 3:7] /= np.linalg.norm(arm[:, 3:7], axis=1, keepdims=True)
    return arm


def plan_mocap(start: tuple[np.ndarray, np.ndarray], offsets: list[np.ndarray], box_xyz: np.ndarray,
               cube_now: np.ndarray | None = None) -> np.ndarray:
    """The mocap action of every step, (SIM_STEPS, 16): per arm xyz, quat wxyz, gripper (0 closed .. 1 open).

    ``start`` is the (2, 3) mocap positions and (2, 4) quaternions at reset, ``offsets`` each arm's grasp_offset.
    Waypoints give the centre between the finger pads. Right arm: reach above the cube, descend, close, lift and
    carry it to the middle, wait, open, back off. Left arm: roll the gripper 90 degrees about its axis (fingers close
    vertically), wait beside the middle, then take the cube's free half at ``cube_now`` (where the right arm holds
    it; the plan is remade at REPLAN_STEP with the measured position), close, pull it away.
    """
    (pos, quat), (off_left, off_right) = start, offsets
    q_left, q_right = quat
    pads = [pos[i] + quat_rotate(quat[i], offsets[i]) for i in (0, 1)]
    pick = quat_mul(q_right, axis_quat((0, 1, 0), -60))  # right gripper pitched down towards the cube
    take = quat_mul(q_left, axis_quat((1, 0, 0), 90))  # left gripper rolled: fingers close vertically
    meet = np.array([0.0, 0.5, 0.25])
    grasp = box_xyz + [0, 0, PICK_HEIGHT]
    hand = (meet if cube_now is None else cube_now) + [-HANDOVER_GAP, 0, 0]
    right = [(0, pads[1], q_right, 0), (90, grasp + [0, 0, 0.08], pick, 1), (130, grasp, pick, 1),
             (170, grasp, pick, 0), (200, meet + [0.05, 0, 0.02], pick, 0), (220, meet, pick, 0),
             (320, meet, pick, 0), (340, meet, pick, 1), (380, meet + [0.1, 0, 0.04], pick, 1),
             (SIM_STEPS, meet + [0.1, 0, 0.04], pick, 1)]
    left = [(0, pads[0], q_left, 0), (100, meet + [-0.16, 0, 0], take, 1), (REPLAN_STEP, meet + [-0.12, 0, 0], take, 1),
            (270, hand, take, 1), (300, hand, take, 0), (340, hand, take, 0), (380, hand + [-0.1, 0, 0], take, 0),
            (SIM_STEPS, hand + [-0.1, 0, 0], take, 0)]
    return np.concatenate([_track(left, off_left), _track(right, off_right)], axis=1)


# ---------------------------------------------------------------------------------------------------------- tasks
class _EndEffectorTask(TransferCubeEndEffectorTask):
    """gym-aloha's mocap transfer-cube task with a given cube pose and no per-step camera rendering."""

    def __init__(self, box_pose: np.ndarray):
        super().__init__(random=np.random.RandomState(0))
        self.box_pose = np.asarray(box_pose, dtype=float)

    def initialize_episode(self, physics):
        self.initialize_robots(physics)
        adr = physics.model.jnt_qposadr[physics.model.name2id("red_box_joint", "joint")]
        physics.data.qpos[adr:adr + 7] = self.box_pose  # the parent draws an unseeded pose; ours is seeded
        physics.forward()
        for arm, side in enumerate(("left", "right")):  # put each mocap where its weld holds the start pose
            link = f"vx300s_{side}/gripper_link"
            relpos, relquat = physics.model.eq_data[arm, 3:6], physics.model.eq_data[arm, 6:10]
            quat = quat_mul(physics.named.data.xquat[link], quat_conj(relquat))
            physics.data.mocap_quat[arm] = quat
            physics.data.mocap_pos[arm] = physics.named.data.xpos[link] - quat_rotate(quat, relpos)
        BimanualViperXEndEffectorTask.initialize_episode(self, physics)

    def get_observation(self, physics):
        return collections.OrderedDict(qpos=self.get_qpos(physics), env_state=self.get_env_state(physics))


class _JointTask(aloha_sim.TransferCubeTask):
    """gym-aloha's joint-position transfer-cube task (AlohaTransferCube-v0) without per-step camera rendering."""

    def get_observation(self, physics):
        return collections.OrderedDict(qpos=self.get_qpos(physics), env_state=self.get_env_state(physics))


def _environment(xml_name: str, task) -> control.Environment:
    physics = mujoco.Physics.from_xml_path(str(ASSETS_DIR / xml_name))
    return control.Environment(physics, task, time_limit=float("inf"), control_timestep=DT,
                               n_sub_steps=None, flat_observation=False)


def end_effector_pass(box_pose: np.ndarray) -> np.ndarray:
    """Run the scripted plan on the mocap scene; return the (SIM_STEPS, 14) joint-position trajectory."""
    env = _environment("bimanual_viperx_end_effector_transfer_cube.xml", _EndEffectorTask(box_pose))
    env.physics.model.eq_solimp[:, :3] = WELD_SOLIMP
    env.reset()
    physics = env.physics
    box_xyz = np.asarray(box_pose[:3], dtype=float)
    start = (physics.data.mocap_pos.copy(), physics.data.mocap_quat.copy())
    offsets = [grasp_offset(physics, arm) for arm in (0, 1)]
    plan = plan_mocap(start, offsets, box_xyz)
    joints, ctrl = [], []
    for step in range(SIM_STEPS):
        if step == REPLAN_STEP:
            plan[step:, :8] = plan_mocap(start, offsets, box_xyz, env.task.get_env_state(physics)[:3])[step:, :8]
        joints.append(env.task.get_qpos(physics))
        ctrl.append(physics.data.ctrl.copy())
        env.step(plan[step])
    traj, ctrl = np.array(joints), np.array(ctrl)
    # As in ACT: the gripper dims carry the commanded (not the measured) normalised opening.
    traj[:, 6] = normalize_puppet_gripper_position(ctrl[:, 0])
    traj[:, 13] = normalize_puppet_gripper_position(ctrl[:, 2])
    return traj


def _ee_pose(physics) -> np.ndarray:
    """(14,) left then right gripper_link: xyz + quaternion xyzw (MuJoCo stores wxyz)."""
    parts = []
    for body in EE_BODIES:
        w, x, y, z = physics.named.data.xquat[body]
        parts += [physics.named.data.xpos[body], [x, y, z, w]]
    return np.concatenate(parts)


def _render(physics, cameras: tuple[str, ...], size: int) -> dict[str, np.ndarray]:
    """RGB and depth in metres; depth is 0 (invalid) where nothing was hit, rounded to 1/1024 m (gzips well)."""
    far = 0.99 * physics.model.vis.map.zfar * physics.model.stat.extent
    frame = {}
    for cam in cameras:
        frame[f"{cam}_rgb"] = physics.render(height=size, width=size, camera_id=cam)
        depth = physics.render(height=size, width=size, camera_id=cam, depth=True)
        depth = np.where(depth < far, np.round(depth * 1024.0) / 1024.0, 0.0)
        frame[f"{cam}_depth"] = depth.astype(np.float32)
    return frame


def joint_pass(box_pose: np.ndarray, traj: np.ndarray, cameras: tuple[str, ...], size: int,
               stride: int) -> dict[str, np.ndarray]:
    """Replay ``traj`` on the joint-position scene; record every ``stride``-th step."""
    aloha_sim.BOX_POSE[0] = np.asarray(box_pose, dtype=float)  # gym-aloha reads the cube pose from this global
    env = _environment("bimanual_viperx_transfer_cube.xml", _JointTask())
    env.reset()
    physics = env.physics
    rec = collections.defaultdict(list)
    for step in range(SIM_STEPS):
        if step % stride == 0:
            for key, value in _render(physics, cameras, size).items():
                rec[key].append(value)
            rec["qpos"].append(env.task.get_qpos(physics))
            rec["ee"].append(_ee_pose(physics))
            rec["states"].append(np.concatenate([[physics.data.time], physics.data.qpos, physics.data.qvel]))
            rec["cube"].append(env.task.get_env_state(physics)[:3])
        reward = env.step(traj[step]).reward
        if step % stride == stride - 1:
            rec["actions"].append(traj[step])  # the last command applied before the next recorded frame
            rec["rewards"].append(reward)
    return {key: np.asarray(values) for key, values in rec.items()}


# ------------------------------------------------------------------------------------------------------------ writing
def _dataset(group: h5py.Group, name: str, array: np.ndarray, dtype) -> None:
    array = np.ascontiguousarray(array, dtype=dtype)
    chunks = (min(16, array.shape[0]),) + array.shape[1:] if array.ndim > 1 else None
    group.create_dataset(name, data=array, chunks=chunks, compression="gzip", compression_opts=4,
                         shuffle=array.dtype.kind == "f", track_times=False)


def write_demo(group: h5py.Group, rec: dict[str, np.ndarray], cameras: tuple[str, ...]) -> None:
    obs = group.create_group("obs", track_order=True)
    for cam in cameras:
        _dataset(obs, f"{cam}_rgb", rec[f"{cam}_rgb"], np.uint8)
        _dataset(obs, f"{cam}_depth", rec[f"{cam}_depth"], np.float32)
    qpos, ee = rec["qpos"], rec["ee"]  # qpos: ALOHA order, per arm 6 joints + normalised gripper opening
    _dataset(obs, "joint_states", qpos[:, ARM_JOINTS], np.float32)  # LIBERO: arm joints only
    _dataset(obs, "gripper_states", qpos[:, GRIPPERS], np.float32)
    _dataset(obs, "ee_pos", ee[:, [0, 1, 2, 7, 8, 9]], np.float32)
    _dataset(obs, "ee_ori", ee[:, [3, 4, 5, 6, 10, 11, 12, 13]], np.float32)
    _dataset(obs, "ee_states", ee, np.float32)
    length = len(qpos)
    dones = np.zeros(length, dtype=np.uint8)
    dones[-1] = 1
    _dataset(group, "actions", rec["actions"], np.float32)
    _dataset(group, "rewards", rec["rewards"], np.float32)
    _dataset(group, "dones", dones, np.uint8)
    _dataset(group, "states", rec["states"], np.float64)
    _dataset(group, "robot_states", qpos, np.float32)  # the 14-d ALOHA qpos, same order as actions
    group.attrs["num_samples"] = length


def _data_attrs(cameras: tuple[str, ...], size: int, stride: int, seed: int) -> dict[str, str]:
    env_args = {"env_name": ENV_NAME, "type": "gym_aloha", "env_kwargs": {
        "task": "transfer_cube", "control_freq": FPS / stride, "sim_control_freq": FPS, "frame_stride": stride,
        "camera_names": list(cameras), "camera_heights": size, "camera_widths": size, "camera_depths": True,
        "seed": seed}}
    problem_info = {"problem_name": "aloha_transfer_cube", "domain_name": "gym_aloha",
                    "language_instruction": INSTRUCTION}
    return {"env_args": json.dumps(env_args), "problem_info": json.dumps(problem_info)}


def record_episode(index: int, seed: int, cameras: tuple[str, ...], size: int, stride: int):
    box_pose = sample_box_pose(seed + index)
    box_pose[2] = CUBE_REST_Z  # gym-aloha drops the cube from z=0.05; start it resting on the table instead
    traj = end_effector_pass(box_pose)
    rec = joint_pass(box_pose, traj, cameras, size, stride)
    lift = float(np.ptp(rec["cube"][:, 2]))  # highest minus lowest cube centre
    success = bool(rec["rewards"][-1] >= MAX_REWARD)
    LOG.info("demo_%d: cube start %s, lifted %.3f m, final reward %d, success %s",
             index, np.round(box_pose[:3], 3).tolist(), lift, rec["rewards"][-1], success)
    return box_pose, rec, lift, success


def generate(out: str | Path, episodes: int = 5, seed: int = 1, cameras: tuple[str, ...] = ("top", "angle"),
             size: int = 128, stride: int = 5) -> Path:
    """Write ``episodes`` demos to ``out`` (atomically). Deterministic given the arguments."""
    if SIM_STEPS % stride:
        raise ValueError(f"--stride {stride} must divide {SIM_STEPS}; pick 1, 2, 4, 5, 8 or 10")
    out = Path(out)
    with atomic_path(out) as tmp:
        with h5py.File(tmp, "w", track_order=True) as f:
            data = f.create_group("data", track_order=True)
            total = 0
            for i in range(episodes):
                box_pose, rec, lift, success = record_episode(i, seed, cameras, size, stride)
                demo = data.create_group(f"demo_{i}", track_order=True)
                write_demo(demo, rec, cameras)
                demo.attrs.update({"seed": seed + i, "cube_start_pose": box_pose, "cube_lift_m": lift,
                                   "success": success})
                total += len(rec["qpos"])
            data.attrs.update(_data_attrs(cameras, size, stride, seed))
            data.attrs["total"] = total
        tmp.chmod(0o644)  # mkstemp made it private; a dataset file is meant to be read by all
    LOG.info("wrote %s (%.1f MB)", out, out.stat().st_size / 1e6)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="data/sample/aloha_sim.hdf5")
    parser.add_argument("--episodes", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1, help="cube pose of episode i = gym_aloha sample_box_pose(seed+i)")
    parser.add_argument("--size", type=int, default=128, help="square image size in pixels")
    parser.add_argument("--stride", type=int, default=5, help="record every n-th 50 Hz sim step")
    parser.add_argument("--cameras", default="top,angle", help="comma-separated scene cameras")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)  # absl already set a handler
    generate(args.out, args.episodes, args.seed, tuple(args.cameras.split(",")), args.size, args.stride)


if __name__ == "__main__":
    main()
