"""Keeping one bad unit from costing its shard, and keeping shard builds identical on every executor.

While a shard builds, ``OUT/shards/.shard-NNNNNN.unit.tmp`` names the unit being processed. An exception
escaping the build is blamed on that unit inside the task (``shard_task.build_shard`` rebuilds without
it); a worker that dies outright (segfault, out of memory) leaves the file behind, so the driver can blame
the unit and resubmit the shard without it. Either way the unit becomes one ``shard`` error record.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Iterator

from motiondata.pipeline import remote_out
from motiondata.pipeline.plan import ShardPlan
from motiondata.pipeline.resume import remove_episode_groups
from motiondata.store import layout
from motiondata.store.manifest import read_shard_manifest

log = logging.getLogger(__name__)

MAX_REASON = 400


def progress_file(out: str | Path, index: int) -> Path:
    return Path(out) / layout.SHARDS_DIR / f".{layout.shard_name(index)}.unit.tmp"


def mark_progress(out: str | Path, index: int, key: str) -> None:
    path = progress_file(out, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(key, encoding="utf-8")


def clear_progress(out: str | Path, index: int) -> None:
    progress_file(out, index).unlink(missing_ok=True)


def short_reason(exc: BaseException) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= MAX_REASON else text[:MAX_REASON - 3] + "..."


def culprit(entry: dict[str, Any] | None, plan: ShardPlan) -> dict[str, Any] | None:
    """The unit to blame for a crash of ``plan``'s build (``None``: nothing left to blame)."""
    if entry is None or entry["key"] in dict(plan.excluded) or entry["key"] not in plan.unit_ids():
        return None
    return entry


def crashed_unit(out: str | Path, plan: ShardPlan) -> dict[str, Any] | None:
    """Driver side: the unit a dead worker was processing, from the progress file it left behind."""
    path = progress_file(out, plan.index)
    try:
        key = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    path.unlink(missing_ok=True)
    return culprit(next((u for u in plan.units if u["key"] == key), None), plan)


def take_previous(out: str | Path, index: int) -> dict[str, Any] | None:
    """The manifest of an earlier build of this shard (removed now: a rebuild killed midway must leave the
    shard not done, never an old manifest beside a new tar; on a remote store, the remote one)."""
    remote_out.take_remote_manifest(out, index)
    try:
        previous = read_shard_manifest(out, index)
    except Exception:  # an unreadable manifest is no done-marker either
        previous = None
    layout.shard_manifest(out, index).unlink(missing_ok=True)
    return previous


def drop_stale_groups(out: str | Path, previous: dict[str, Any] | None, manifest: dict[str, Any]) -> None:
    """Zarr groups the previous build stored that this build no longer stores (removed or now rejected)."""
    if previous:
        stale = set(previous.get("episodes", [])) - set(manifest.get("episodes", []))
        remove_episode_groups(Path(out), stale)


def discard(out: str | Path, plan: ShardPlan, previous: dict[str, Any] | None) -> None:
    """A shard that failed for good leaves nothing behind: no tar, partial stats or zarr groups."""
    out = Path(out)
    clear_progress(out, plan.index)
    layout.shard_tar(out, plan.index).unlink(missing_ok=True)
    layout.shard_stats(out, plan.index).unlink(missing_ok=True)
    remote_out.delete_objects(out, remote_out.shard_rels(plan.index, manifest_too=False))
    episodes = {u["episode"] for u in plan.units} | set((previous or {}).get("episodes", []))
    remove_episode_groups(out, episodes)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Pin torch's intra-op threads to 1 for one shard build (restored after), so float results do not
    depend on the executor's thread count and Ray and in-process builds write the same bytes."""
    try:
        import torch
    except ImportError:  # stages without torch are thread-count independent
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
