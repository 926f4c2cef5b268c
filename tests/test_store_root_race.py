"""Several shard tasks of one node creating the episode store's root at once (a fresh staging folder of a
remote build) must all succeed: before the fix one of them could fail with zarr's ContainsGroupError, and
its episode became a "crashed its shard" record (a good sample lost)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np

from motiondata.store import layout
from motiondata.store.episodes_zarr import ensure_store, list_episodes, write_episode

TASKS = 6


def _create(args: tuple[str, int, object]) -> str:
    out, index, barrier = args
    barrier.wait()  # all tasks start the root at the same moment
    try:
        write_episode(out, f"ep_{index}", {"actions": np.full((4, 2), index, np.float32)}, {"length": 4})
    except Exception as exc:  # reported back: the assertion names it
        return f"{type(exc).__name__}: {exc}"
    return "ok"


def test_concurrent_tasks_create_one_root_and_keep_every_episode(tmp_path):
    reference = tmp_path / "reference"
    ensure_store(reference)
    context = multiprocessing.get_context("fork")
    for attempt in range(5):
        out = tmp_path / f"staging-{attempt}"
        barrier = context.Manager().Barrier(TASKS)
        with context.Pool(TASKS) as pool:
            results = pool.map(_create, [(str(out), i, barrier) for i in range(TASKS)])
        assert results == ["ok"] * TASKS, results
        assert list_episodes(out) == [f"ep_{i}" for i in range(TASKS)]
        root = Path(layout.zarr_store(out))
        assert (root / "zarr.json").read_bytes() == (Path(layout.zarr_store(reference)) / "zarr.json").read_bytes()
        assert not [p.name for p in root.iterdir() if p.name.startswith(".")]  # no temporary left behind
