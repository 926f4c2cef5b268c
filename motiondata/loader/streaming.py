"""Stream a store's shards into training batches: sharded, shuffled, resumable, DDP-safe (docs/loader.md).

Every epoch, identically on every rank and worker: shards (from ``OUT/manifest.json``, or a glob / list of
tar URLs with their ``.json`` sidecars) are permuted by (seed, epoch); their samples, concatenated, are
cut into ``world_size x num_workers`` contiguous slots of equal length (by samples, so no rank is ever
empty; ``partial`` drops or wraps the tail); each slot goes through a shuffle buffer seeded by (seed,
epoch, slot) whose order is computed on indices first, so a resumed loader reads only what is to come.
Batches are taken from the workers round-robin (forked by :mod:`motiondata.loader.worker_pool`; each hands
its batches over in a shared-memory ring slot, :mod:`motiondata.loader.batch_ring`); state = (epoch,
batches consumed), and on resume worker w plays slot ``(k + w) mod W``. One pool runs epoch after epoch.

Local shards are read by member offset (:mod:`motiondata.loader.member_index`: the shard manifest's
``members`` index, or one header scan per process) straight into preallocated batch arrays
(:mod:`motiondata.loader.batch_reader`): the same samples in the same order as the sequential tar reader,
which remains for remote URLs, damaged or crafted shards, ``transform=`` and custom ``collate``.
``episodes=`` keeps only some episodes' samples (the trainer's held-out split), from the manifests.

Corrupt data (missing/truncated/compressed tar, bad header, refused member names, undecodable or lying
``.npy`` headers, a sample whose arrays disagree with its batch) is reported with shard and key, then
raises (``on_corrupt="raise"``) or is skipped with a warning and stood in for by another sample of the
same batch, so batch counts stay equal across ranks and training never stops on bad data.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from typing import Any, Callable, Collection, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from motiondata.errors import StoreError
from motiondata.loader.batch_reader import BatchReader
from motiondata.loader.batch_ring import ALIGN, BatchRing, make_ring, ship, unpack
from motiondata.loader.collate import collate_samples
from motiondata.loader.member_index import warm
from motiondata.loader.selection import select_episodes
from motiondata.loader.transfer import DevicePrefetcher
from motiondata.loader.worker_pool import WorkerPool
from motiondata.loader.shard_reader import POLICIES, ShardInfo, available_fields, read_shard, resolve_shards  # noqa: F401

log = logging.getLogger(__name__)
PARTIALS = ("drop", "wrap", "auto")

# ----------------------------------------------------------------------------- the epoch plan

def shuffle_order(n: int, buffer: int, rng: np.random.Generator) -> np.ndarray:
    """Output order of a shuffle buffer of size ``buffer`` fed 0..n-1: entry p is < p + buffer."""
    if buffer <= 1:
        return np.arange(n, dtype=np.int64)
    draws, buf, out = rng.random(n), [], np.empty(n, dtype=np.int64)
    p = 0
    for i in range(n):
        buf.append(i)
        if len(buf) >= buffer:
            j = int(draws[p] * len(buf))
            buf[j], buf[-1] = buf[-1], buf[j]
            out[p], p = buf.pop(), p + 1
    while buf:
        j = int(draws[p] * len(buf))
        buf[j], buf[-1] = buf[-1], buf[j]
        out[p], p = buf.pop(), p + 1
    return out


def slot_runs(shards: Sequence[ShardInfo], order: Sequence[int], start: int, stop: int) -> list[tuple[int, int, int]]:
    """``(shard index, first sample, stop sample)`` runs covering global positions ``start..stop-1`` of the
    concatenation of ``shards`` taken in ``order`` (positions past the end wrap around)."""
    counts = np.array([shards[i].count for i in order], dtype=np.int64)
    ends, total, runs = np.cumsum(counts), int(counts.sum()), []
    while start < stop:
        g = start % total
        i = int(np.searchsorted(ends, g, side="right"))
        offset = g - int(ends[i] - counts[i])
        take = min(int(counts[i]) - offset, stop - start)
        runs.append((int(order[i]), offset, offset + take))
        start += take
    return runs


def _odd_samples(chunk: list[dict]) -> set[str]:
    """Keys of samples with an array field whose (dtype, rank, shape past axis 0) is not the batch's most
    common one for that field."""
    signatures: dict[str, Counter] = {}
    for sample in chunk:
        for name, value in sample.items():
            if isinstance(value, np.ndarray):
                signatures.setdefault(name, Counter())[(value.dtype.str, value.ndim, value.shape[1:])] += 1
    common = {name: counts.most_common(1)[0][0] for name, counts in signatures.items()}
    return {str(s["__key__"]) for s in chunk
            if any(isinstance(v, np.ndarray) and (v.dtype.str, v.ndim, v.shape[1:]) != common[n] for n, v in s.items())}


# ----------------------------------------------------------------------------- dataset

class StreamingDataset(IterableDataset):
    """Yields collated batches of one rank; use through ``StreamingLoader`` (which keeps the state)."""

    def __init__(self, source: Any, batch_size: int, fields: Sequence[str] | None = None, *,
                 shuffle: bool = True, shuffle_buffer: int = 256, seed: int = 0, rank: int = 0,
                 world_size: int = 1, on_corrupt: str = "skip", partial: str = "drop",
                 transform: Callable[[dict], dict] | None = None, collate: Callable = collate_samples,
                 episodes: Callable[[str], bool] | Collection[str] | None = None, fast: bool = True, pin: bool = False):
        if on_corrupt not in POLICIES or partial not in PARTIALS:
            raise ValueError(f"on_corrupt must be one of {POLICIES} and partial one of {PARTIALS}; "
                             f"got {on_corrupt!r}, {partial!r}")
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size; got {batch_size}, {rank}, {world_size}")
        self.shards = resolve_shards(source)
        if episodes is not None:  # a held-out split: plan and read only these episodes' samples
            keep = episodes if callable(episodes) else set(episodes).__contains__
            self.shards = select_episodes(self.shards, keep)
        self.total = sum(s.count for s in self.shards)
        if self.total == 0:
            raise StoreError(f"{source!r} holds no samples; Fix: check the build's errors.jsonl")
        self.batch_size, self.fields = batch_size, (set(fields) if fields is not None else None)
        self.shuffle, self.shuffle_buffer, self.seed = shuffle, shuffle_buffer, seed
        self.rank, self.world_size, self.on_corrupt, self.partial = rank, world_size, on_corrupt, partial
        self.transform, self.collate = transform, collate
        self.fast = fast and transform is None and collate is collate_samples
        self.reader = BatchReader(self.shards, self.fields, pin=pin)
        self.epoch, self.skip_batches = 0, 0  # set by StreamingLoader before each pass

    def batches_per_slot(self, num_workers: int) -> int:
        """Batches each rank x worker slot yields per epoch (``partial="auto"``: drop, or wrap when
        dropping would leave no batch at all)."""
        slots, bs = self.world_size * max(num_workers, 1), self.batch_size
        count = self.total // (slots * bs)
        if self.partial == "wrap" or (self.partial == "auto" and count == 0):
            count = -(-self.total // (slots * bs))
        if count == 0:
            raise StoreError(f"{self.total} samples are fewer than one batch of {bs} for each of {slots} "
                             "rank x worker slots; Fix: lower batch_size or num_workers, or use partial='wrap'")
        return count

    def _shard_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.shards))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))

    def _read_runs(self, runs: list[tuple[int, int, int]], needed: np.ndarray) -> Iterator[tuple[int, dict | None]]:
        base = 0
        for shard_index, first, stop in runs:
            shard = self.shards[shard_index]
            wanted = {shard.real(i): base + i - first for i in range(first, stop) if needed[base + i - first]}
            yield from read_shard(shard, wanted, self.fields, self.on_corrupt)
            base += stop - first

    def _slot_plan(self, slot: int, num_slots: int, epoch: int) -> tuple[int, list, np.ndarray]:
        """Samples per slot, the shard runs of ``slot`` and the shuffle buffer's output order."""
        m = self.batches_per_slot(num_slots // self.world_size) * self.batch_size
        runs = slot_runs(self.shards, self._shard_order(epoch), slot * m, (slot + 1) * m)
        buffer = self.shuffle_buffer if self.shuffle else 1
        return m, runs, shuffle_order(m, buffer, np.random.default_rng([self.seed, epoch, slot, 1]))

    def iter_slot(self, slot: int, num_slots: int, epoch: int, skip: int = 0) -> Iterator[dict | None]:
        """Samples (None for a skipped corrupt one) of ``slot`` in ``epoch``, from batch ``skip`` on."""
        m, runs, order = self._slot_plan(slot, num_slots, epoch)
        needed = np.zeros(m, dtype=bool)
        needed[order[skip * self.batch_size:]] = True
        reader, held = self._read_runs(runs, needed), {}
        for target in order[skip * self.batch_size:]:
            while target not in held:
                tag, sample = next(reader)
                held[tag] = sample
            sample = held.pop(target)
            yield self.transform(sample) if sample is not None and self.transform else sample

    def _collate(self, chunk: list[dict]) -> dict:
        """Collate; under ``on_corrupt="skip"`` a sample whose arrays disagree with the batch's majority
        (dtype, rank or trailing shape: a crafted or foreign shard) is replaced by a stand-in, not fatal."""
        try:
            return self.collate(chunk)
        except StoreError as err:
            if self.on_corrupt == "raise":
                raise
            odd = _odd_samples(chunk)
            good = [s for s in chunk if s["__key__"] not in odd]
            if not odd or not good:
                raise
            log.warning("skipping samples whose fields disagree with their batch (%s): %s", err, sorted(odd)[:8])
            return self.collate([s if s["__key__"] not in odd else good[i % len(good)] for i, s in enumerate(chunk)])

    def _complete(self, chunk: list[dict | None], last_good: list[dict]) -> dict:
        """Collate ``chunk``, standing in for corrupt (None) samples with good ones of this batch (or of
        the last batch that had any)."""
        good = [s for s in chunk if s is not None] or list(last_good)
        if not good:
            raise StoreError("every sample of a batch is corrupt and no earlier batch exists to stand in; "
                             "Fix: rebuild the store's corrupt shards")
        last_good[:] = good
        return self._collate([s if s is not None else good[i % len(good)] for i, s in enumerate(chunk)])

    def _batches(self, samples: Iterator[dict | None]) -> Iterator[dict]:
        last_good: list[dict] = []
        while True:
            chunk = [s for _, s in zip(range(self.batch_size), samples)]
            if not chunk:
                return
            yield self._complete(chunk, last_good)

    def _strict(self, shard: int, index: int) -> dict | None:
        """One sample through the sequential tar reader (it reports corrupt data by policy)."""
        return next(read_shard(self.shards[shard], {index: 0}, self.fields, self.on_corrupt))[1]

    def _indexed_batches(self, slot: int, num_slots: int, epoch: int, skip: int) -> Iterator[dict] | None:
        """Batches of ``slot`` read by member offset (same samples and order as the sequential path), or
        None when a shard of the slot has no trustworthy index (remote, damaged or crafted)."""
        m, runs, order = self._slot_plan(slot, num_slots, epoch)
        if any(self.reader.index(s) is None for s, _, _ in runs):
            return None
        shard_of = np.concatenate([np.full(stop - first, s) for s, first, stop in runs])
        pos_of = np.concatenate([np.arange(first, stop) for _, first, stop in runs])
        return self._read_indexed(order, shard_of, pos_of, skip)

    def _read_indexed(self, order: np.ndarray, shard_of: np.ndarray, pos_of: np.ndarray, skip: int) -> Iterator[dict]:
        bs, last_good, last_planned = self.batch_size, [], None
        for b in range(skip, len(order) // bs):
            refs = [(int(shard_of[p]), self.shards[int(shard_of[p])].real(int(pos_of[p]))) for p in order[b * bs:(b + 1) * bs]]
            planned = [self.reader.plan(s, i) for s, i in refs]
            if all(p is not None for p in planned):
                try:
                    batch, last_planned = self.reader.collate(planned), planned
                    yield batch
                    continue
                except StoreError:
                    pass  # arrays disagree or a read came up short: per sample, with stand-ins
            chunk = [self._materialize(p, s, i) for p, (s, i) in zip(planned, refs)]
            if not any(c is not None for c in chunk) and not last_good and last_planned:
                last_good = [self.reader.materialize(*p) for p in last_planned]
            yield self._complete(chunk, last_good)

    def _materialize(self, planned: tuple | None, shard: int, index: int) -> dict | None:
        if planned is not None:
            try:
                return self.reader.materialize(*planned)
            except (StoreError, OSError, ValueError):
                pass
        return self._strict(shard, index)

    def __iter__(self) -> Iterator[dict]:
        """Batches of this rank from (epoch, skip_batches) on, epoch after epoch without end: a DataLoader
        iterator lives across epochs, so its workers never restart and prefetching never stalls."""
        info = get_worker_info()
        workers, wid = (info.num_workers, info.id) if info else (1, 0)
        k = self.skip_batches
        role = (k + wid) % workers  # round-robin continues at the worker that owns batch k; an epoch is a
        slot = self.rank * workers + role  # multiple of `workers` batches, so roles hold across epochs
        if info is not None:
            torch.set_num_threads(1)  # workers only decode; leave the cores to the trainer
        epoch, skip = self.epoch, (k + wid) // workers
        while True:
            num_slots = self.world_size * workers
            indexed = self._indexed_batches(slot, num_slots, epoch, skip) if self.fast else None
            batches = indexed if indexed is not None else self._batches(self.iter_slot(slot, num_slots, epoch, skip))
            # a worker's batch crosses to the trainer in a slot of the shared-memory ring (batch_ring)
            yield from batches if info is None else (ship(b, self.reader.ring) for b in batches)
            epoch, skip = epoch + 1, 0

    def batch_bytes(self) -> int | None:
        """A bound on a batch's bytes (ragged fields padded, masks and all), from the member indices; None
        when a shard has none (then worker batches go through the pipe)."""
        if not hasattr(self, "_batch_bytes"):
            most = self.reader.max_sample_bytes()
            self._batch_bytes = None if most is None else 2 * self.batch_size * most + 1024 * ALIGN
        return self._batch_bytes


# ----------------------------------------------------------------------------- loader

def _as_is(batch: dict[str, Any]) -> dict[str, Any]:
    """Batches are collated already (a worker's arrays sit in a ring slot or one arena: batch_ring)."""
    return batch


def _default_rank() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class StreamingLoader:
    """Resumable batch iterator over a store for one rank.

    Iterating runs the rest of the current epoch, then advances the epoch; ``state_dict()`` taken after
    receiving a batch resumes right after it. ``device="cuda"`` copies batches ahead on a side stream.
    """

    def __init__(self, source: Any, batch_size: int, fields: Sequence[str] | None = None, *,
                 num_workers: int = 0, shuffle: bool = True, shuffle_buffer: int = 256, seed: int = 0,
                 rank: int | None = None, world_size: int | None = None, on_corrupt: str = "skip",
                 partial: str = "drop", transform: Callable[[dict], dict] | None = None,
                 device: str | torch.device | None = None, pin_memory: bool | None = None,
                 prefetch_factor: int = 4, episodes: Callable[[str], bool] | Collection[str] | None = None,
                 fast: bool = True):
        default_rank, default_world = _default_rank()
        cuda = device is not None and torch.device(device).type == "cuda"
        pin_memory = cuda if pin_memory is None else pin_memory
        self.dataset = StreamingDataset(
            source, batch_size, fields, shuffle=shuffle, shuffle_buffer=shuffle_buffer, seed=seed,
            rank=default_rank if rank is None else rank, world_size=default_world if world_size is None else world_size,
            on_corrupt=on_corrupt, partial=partial, transform=transform, episodes=episodes, fast=fast,
            pin=pin_memory and num_workers == 0)  # in-process: batches are read straight into pinned memory
        self.num_workers, self.prefetch_factor = num_workers, prefetch_factor
        self.device = torch.device(device) if device is not None else None
        self.pin_memory = pin_memory and not (num_workers == 0 and self.dataset.fast)
        self.epoch, self.batches = 0, 0
        self._live: Iterator[dict[str, Any]] | None = None  # one batch stream across epochs
        self.ring: BatchRing | None = None  # the shared-memory ring of the live workers

    def __len__(self) -> int:
        """Batches per epoch on this rank (the same on every rank)."""
        return self.dataset.batches_per_slot(self.num_workers) * max(self.num_workers, 1)

    def _fingerprint(self) -> dict[str, int]:
        ds = self.dataset
        return {"batch_size": ds.batch_size, "world_size": ds.world_size, "rank": ds.rank,
                "num_workers": self.num_workers, "seed": ds.seed, "total": ds.total}

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batches": self.batches, **self._fingerprint()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        changed = {k: (state.get(k), v) for k, v in self._fingerprint().items() if state.get(k, v) != v}
        if changed:
            raise ValueError(f"loader state was saved with other settings {changed} (saved, now); the sample "
                             "order would differ. Fix: resume with the same batch_size, world_size, "
                             "num_workers, seed and store")
        self.epoch, self.batches, self._live = int(state["epoch"]), int(state["batches"]), None

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.batches, self._live = int(epoch), 0, None

    def close(self) -> None:
        """Stop the worker processes (they also stop when the loader is garbage-collected)."""
        self._live = self.ring = None  # the ring's memory goes with the last batch still viewing it

    def _dataloader(self) -> tuple[Iterable[dict], BatchRing | None]:
        """In-process a DataLoader; with workers a pool of forked workers (worker_pool) and the ring they hand
        batches over in (batch_ring; a new one per pool: batches of an earlier one may still be alive)."""
        if self.num_workers == 0:
            self.dataset.reader.ring = None
            return DataLoader(self.dataset, batch_size=None, collate_fn=_as_is, pin_memory=self.pin_memory), None
        warm(self.dataset.shards)  # forked workers inherit the member indices instead of each building them
        ring = self.dataset.reader.ring = make_ring(self.num_workers, self.prefetch_factor, self.dataset.batch_bytes())
        return WorkerPool(self.dataset, self.num_workers, self.prefetch_factor), ring  # unpack pins its batches

    def _start(self) -> Iterator[dict[str, Any]]:
        self.dataset.epoch, self.dataset.skip_batches = self.epoch, self.batches
        loader, ring = self._dataloader()
        self.ring = ring  # kept for inspection (tests, benchmarks)
        pin = self.pin_memory  # not self: a cycle would leave the workers to gc, which stops them slowly
        batches = (unpack(b, pin, ring) for b in loader)  # worker batches: ring slot views
        return iter(DevicePrefetcher(batches, self.device) if self.device is not None else batches)

    def _next(self) -> dict[str, Any]:
        try:
            return next(self._live)
        except BaseException:  # a failed stream is not resumed: the next iter() starts afresh
            self._live = None
            raise

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """The rest of the current epoch; the next ``iter()`` continues with the next epoch."""
        if self.batches >= len(self):
            self.epoch, self.batches = self.epoch + 1, 0
        if self._live is None:
            self._live = self._start()  # made outside this frame: close() must be able to drop it
        while self.batches < len(self):
            batch = self._next()
            self.batches += 1
            yield batch
        self.epoch, self.batches = self.epoch + 1, 0
