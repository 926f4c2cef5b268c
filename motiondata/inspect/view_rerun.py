"""``motiondata view STORE --rerun out.rrd``: the decoded episodes as a rerun recording.

Entities per episode ``<id>/`` on the ``frame`` timeline (sequence = episode frame index):

    <id>/rgb/<cam>                 Image       the stored frames of every camera
    <id>/vae/<table>/recon         Image       VAE reconstructions;      <id>/vae/<table>/psnr   Scalars
    <id>/keyframes/<table>/decoded Image       VQGAN decodes at their frames; .../psnr             Scalars
    <id>/flow/<table>/tracks       LineStrips2D the grid tracks of a query frame, coloured by dd
    <id>/flow/<table>/image        Image       the query frame they are drawn on
    <id>/actions/raw/<d>           Scalars     each action dimension
    <id>/actions/fast/<d>          Scalars     its FAST round trip (decoded stored ids), per chunk step
    <id>/text                      TextDocument the instruction
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from motiondata.inspect.episode_data import EpisodeData, load_episode, load_store


def _dd_colours(dd: np.ndarray) -> np.ndarray:
    """Blue (towards the camera, dd < 0) to red (away), per point: (N, 3) uint8."""
    span = float(np.abs(dd).max()) or 1e-6
    t = np.clip(dd / span, -1, 1)[:, None]
    blue, grey, red = np.array([40, 90, 230.0]), np.array([200, 200, 200.0]), np.array([230, 50, 40.0])
    return np.where(t < 0, grey + (blue - grey) * -t, grey + (red - grey) * t).astype(np.uint8)


def _frames(rec: Any, rr: Any, data: EpisodeData) -> None:
    root = data.id
    for cam, frames in data.cameras.items():
        for i, frame in enumerate(frames):
            rec.set_time("frame", sequence=i)
            rec.log(f"{root}/rgb/{cam}", rr.Image(frame))
    for c in data.vae:
        for f, img, p in zip(c.frames, c.recon, c.psnr):
            rec.set_time("frame", sequence=int(f))
            rec.log(f"{root}/vae/{c.name}/recon", rr.Image(img))
            rec.log(f"{root}/vae/{c.name}/psnr", rr.Scalars(float(p)))
    for c in data.keyframes:
        for f, img, p in zip(c.frames, c.decoded, c.psnr):
            rec.set_time("frame", sequence=int(f))
            rec.log(f"{root}/keyframes/{c.name}/decoded", rr.Image(img))
            rec.log(f"{root}/keyframes/{c.name}/psnr", rr.Scalars(float(p)))


def _flow_and_actions(rec: Any, rr: Any, data: EpisodeData) -> None:
    root = data.id
    for c in data.flow:
        for q, frame in enumerate(c.queries):
            rec.set_time("frame", sequence=int(frame))
            keep = c.valid[q, :, 0]
            strips = [c.paths[q, p, : int(c.valid[q, p].sum()) + 1] for p in np.flatnonzero(keep)]
            rec.log(f"{root}/flow/{c.name}/image", rr.Image(c.images[q]))
            rec.log(f"{root}/flow/{c.name}/tracks", rr.LineStrips2D(strips, colors=_dd_colours(c.dd[q][keep])))
            rec.log(f"{root}/flow/{c.name}/valid_share", rr.Scalars(float(c.valid[q].mean())))
    actions = data.tables.get("actions")
    if actions is not None:
        for i, row in enumerate(np.asarray(actions.values, np.float64)):
            rec.set_time("frame", sequence=i)
            for d, v in enumerate(row):
                rec.log(f"{root}/actions/raw/{d}", rr.Scalars(float(v)))
    for c in data.fast:
        for start, chunk, mask in zip(c.starts, c.decoded, c.mask):
            for step in np.flatnonzero(mask):
                rec.set_time("frame", sequence=int(start) + int(step))
                for d, v in enumerate(chunk[step]):
                    rec.log(f"{root}/actions/fast/{d}", rr.Scalars(float(v)))


def write_rrd(out: str | Path, path: str | Path, episodes: list[str] | None = None,
              max_latents: int | None = 8) -> Path:
    """Write the store's episodes (all, or ``episodes``) into the rerun recording ``path``."""
    import rerun as rr

    store = load_store(out)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rec = rr.RecordingStream("motiondata_view")
    rec.save(str(path))
    for episode in episodes or store.episodes:
        data = load_episode(store, episode, max_latents)
        rec.log(f"{episode}/text", rr.TextDocument(str(data.attrs.get("language") or "")), static=True)
        _frames(rec, rr, data)
        _flow_and_actions(rec, rr, data)
    rec.flush()
    rec.disconnect()
    return path
