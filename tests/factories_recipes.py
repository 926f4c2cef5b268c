"""Factories for recipe tests: a small copy of the bundled gym-aloha file and seed specs pointed at it."""

from __future__ import annotations

from pathlib import Path

import h5py
import yaml

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "sample" / "aloha_sim.hdf5"


def small_aloha(path: Path, episodes: int = 2, frames: int = 40) -> Path:
    """The first ``episodes`` demos of the bundled sample, cut to ``frames`` steps (same layout and attrs)."""
    with h5py.File(SAMPLE, "r") as src, h5py.File(path, "w") as dst:
        data = dst.create_group("data")
        for key, value in src["data"].attrs.items():
            data.attrs[key] = value
        for i in range(episodes):
            name = f"demo_{i}"
            group = data.create_group(name)
            for key, value in src["data"][name].attrs.items():
                group.attrs[key] = value

            def copy(sub: str, node, group=group) -> None:
                if isinstance(node, h5py.Dataset):
                    group.create_dataset(sub, data=node[:frames] if node.ndim else node[()])
                else:
                    group.require_group(sub)

            src["data"][name].visititems(copy)
            if "num_samples" in group.attrs:
                group.attrs["num_samples"] = frames
    return path


def seed_spec(name: str, tmp: Path, hdf5: Path, size: int = 32, **samples_override) -> Path:
    """``pipelines/<name>.yaml`` on ``hdf5`` at ``size`` x ``size`` (model paths made absolute)."""
    spec = yaml.safe_load((REPO / "pipelines" / f"{name}.yaml").read_text())
    spec["sources"][0]["path"] = str(hdf5)
    spec["frames"]["size"] = [size, size]
    for stage in spec["stages"]:
        for key in ("model", "tokenizer", "config", "weights", "depth_model"):
            value = stage.get(key)
            if isinstance(value, str) and (REPO / value).exists():
                stage[key] = str(REPO / value)
    spec.setdefault("samples", {}).update(samples_override)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
