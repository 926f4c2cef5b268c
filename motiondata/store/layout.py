"""Every path of a store, in one place. Nothing else in motiondata builds store paths by hand.

    OUT/manifest.json                 job manifest (format version, spec + hash, versions, shard list)
    OUT/stats.json                    norm stats, openpi norm_stats.json format
    OUT/errors.jsonl                  one record per rejected input
    OUT/shards/shard-000000.tar       WebDataset shard
    OUT/shards/shard-000000.stats.bin   partial (mergeable) stats of one shard (older stores: .stats.json)
    OUT/shards/index.jsonl            shard list of a job with more than INDEX_THRESHOLD shards
    OUT/shards/shard-000000.json      per-shard manifest: written last, it marks the shard done
    OUT/episodes.zarr/<episode_id>/   Zarr v3 group per episode
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

SHARD_DIGITS = 6
JOB_MANIFEST = "manifest.json"
STATS = "stats.json"
ERRORS = "errors.jsonl"
SHARDS_DIR = "shards"
ZARR_STORE = "episodes.zarr"
REPORT = "report.md"
SHARD_INDEX = f"{SHARDS_DIR}/index.jsonl"


def shard_name(index: int) -> str:
    return f"shard-{index:0{SHARD_DIGITS}d}"


def shard_tar(out: str | Path, index: int) -> Path:
    return Path(out) / SHARDS_DIR / f"{shard_name(index)}.tar"


def shard_manifest(out: str | Path, index: int) -> Path:
    return Path(out) / SHARDS_DIR / f"{shard_name(index)}.json"


def shard_stats(out: str | Path, index: int) -> Path:
    """Partial stats of one shard: little-endian arrays behind a small JSON header (``stats.py``)."""
    return Path(out) / SHARDS_DIR / f"{shard_name(index)}.stats.bin"


def shard_stats_json(out: str | Path, index: int) -> Path:
    """Partial stats as JSON, as stores written before the binary partials have them (read only)."""
    return Path(out) / SHARDS_DIR / f"{shard_name(index)}.stats.json"


def shard_index(out: str | Path) -> Path:
    """The shard list (one JSON line per shard) of a job manifest with more than ``INDEX_THRESHOLD`` shards."""
    return Path(out) / SHARD_INDEX


def job_manifest(out: str | Path) -> Path:
    return Path(out) / JOB_MANIFEST


def stats_file(out: str | Path) -> Path:
    return Path(out) / STATS


def errors_file(out: str | Path) -> Path:
    return Path(out) / ERRORS


def report_file(out: str | Path) -> Path:
    return Path(out) / REPORT


def zarr_store(out: str | Path) -> Path:
    return Path(out) / ZARR_STORE


def zarr_episode(out: str | Path, episode_id: str) -> Path:
    return zarr_store(out) / episode_id


def shard_urls(out: str | Path, count: int) -> list[str]:
    """Shard paths in order, for webdataset / the streaming loader."""
    return [str(shard_tar(out, i)) for i in range(count)]


@contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; stores are shared, so use the usual mode
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(final: str | Path, data: bytes) -> None:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(final: str | Path, text: str) -> None:
    atomic_write_bytes(final, text.encode("utf-8"))
