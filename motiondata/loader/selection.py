"""Select samples of a store by episode (a held-out split) from the shard manifests, without reading tars.

Every shard manifest lists its samples in tar order with their ``episode``
(``OUT/shards/shard-NNNNNN.json``, or the ``.json`` beside a tar passed by URL); a selection keeps the
indices of the samples whose episode passes, so the loader plans and reads only those.

``split_episodes`` is the trainer's deterministic held-out split: an episode is held out when the first 8
bytes of ``sha256(seed:episode)``, read as a fraction, fall below ``fraction`` (at least one episode each
side when there are two or more), so the split never depends on shard order or on which other episodes
the store holds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Callable, Iterable, Sequence

from motiondata.errors import StoreError
from motiondata.loader.shard_reader import ShardInfo, _read_json

KEY_SUFFIX = re.compile(r"_(t\d{6}|w\d+)$")  # recipe keys end _tNNNNNN (anchor), windowed keys _wNNNN


def episode_of_key(key: str) -> str:
    """The episode id a sample key starts with (``aloha_demo_0_t000012`` -> ``aloha_demo_0``)."""
    return KEY_SUFFIX.sub("", key)


def shard_episodes(shard: ShardInfo) -> list[str]:
    """Episode of every sample of ``shard``, in tar order, from its manifest."""
    doc = _read_json(shard.url[: -len(".tar")] + ".json") if shard.url.endswith(".tar") else None
    if not doc or not isinstance(doc.get("samples", doc.get("keys")), list):
        raise StoreError(f"{shard.url} has no shard manifest listing its samples, so samples cannot be selected by "
                         "episode; Fix: load the store directory (with shards/*.json), or rebuild it", shard=shard.name)
    records = doc.get("samples")
    if isinstance(records, list) and all(isinstance(r, dict) and isinstance(r.get("episode"), str) for r in records):
        return [r["episode"] for r in records]
    return [episode_of_key(str(k)) for k in doc["keys"]]


def select_episodes(shards: Sequence[ShardInfo], keep: Callable[[str], bool]) -> list[ShardInfo]:
    """``shards`` with ``indices`` set to the samples whose episode ``keep`` accepts (empty shards dropped)."""
    out = []
    for shard in shards:
        episodes = shard_episodes(shard)[: shard.num_samples]
        indices = tuple(i for i, e in enumerate(episodes) if keep(e))
        if indices:
            out.append(dataclasses.replace(shard, indices=indices))
    return out


def store_episodes(shards: Sequence[ShardInfo]) -> list[str]:
    """Every episode of the shards, sorted."""
    return sorted({e for s in shards for e in shard_episodes(s)[: s.num_samples]})


def _fraction(seed: int, episode: str) -> float:
    return int.from_bytes(hashlib.sha256(f"{seed}:{episode}".encode()).digest()[:8], "big") / 2 ** 64


def split_episodes(episodes: Iterable[str], fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """``(train, held_out)`` episode lists; deterministic per (seed, episode)."""
    ranked = sorted(set(episodes), key=lambda e: (_fraction(seed, e), e))
    held = [e for e in ranked if _fraction(seed, e) < fraction]
    if fraction > 0 and not held and len(ranked) > 1:
        held = ranked[:1]
    if len(held) == len(ranked) and len(ranked) > 1:
        held = held[:-1]
    train = sorted(e for e in ranked if e not in held)
    return train, sorted(held)
