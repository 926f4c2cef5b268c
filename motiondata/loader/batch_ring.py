"""How a loader worker's batch reaches the trainer process: a ring of shared-memory slots, no copy.

Before the workers fork, the trainer process maps one anonymous shared region (``BatchRing``): per worker
a few slots, each large enough for a batch. A worker reads its batch straight into a free slot of its own
(:mod:`motiondata.loader.batch_reader`; batches collated another way are copied in once by :func:`ship`)
and only ``(worker, slot, size, views)`` and the small Python values travel through the worker's pipe
(:mod:`motiondata.loader.worker_pool`). The trainer hands out tensors that are views of the slot (:func:`unpack`); when the last of them
is garbage-collected the slot is free again. With ``pin`` the slot is copied once into page-locked
memory and freed at once.

Before this, every batch was pickled through a DataLoader worker's pipe (about 6 copies; 4-9x the CPU
per sample of the in-process loader, docs/bench/loader_workers.md); torch's own path (a new shared-memory
file per tensor per batch plus a descriptor handshake) was slower still.

Nothing waits on the consumer: a worker that finds none of its slots free (the trainer still holds those
batches) or a batch larger than a slot sends the batch as one array through the pipe instead. The mapping
has no name in /dev/shm (so no /dev/shm size limit, as in containers, applies) and is gone when the last
process mapping it exits: a crashed worker leaks nothing. The workers inherit it through ``fork``.

Ordering: a worker takes a slot only after reading its flag 0 (free), which the trainer sets after the
last view of it died; the batch's data is visible to the trainer once its message arrived (a pipe read).
"""

from __future__ import annotations

import math
import mmap
import weakref
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

ALIGN = 64  # every view starts on a cache line
Views = list[tuple[str, str, list[int], int]]  # (field, torch dtype name, shape, byte offset in the arena)
NUMPY_OF = {torch.from_numpy(np.empty(0, t)).dtype: np.dtype(t) for t in
            (np.bool_, np.uint8, np.int8, np.int16, np.int32, np.int64, np.float16, np.float32, np.float64,
             np.complex64, np.complex128)}


class BatchRing:
    """``slots`` slots of ``slot_bytes`` for each of ``workers`` workers, in one anonymous shared mapping."""

    def __init__(self, workers: int, slots: int, slot_bytes: int):
        self.workers, self.slots = workers, slots
        self.slot_bytes = -(-max(slot_bytes, 1) // mmap.PAGESIZE) * mmap.PAGESIZE
        self._head = -(-(workers * slots) // mmap.PAGESIZE) * mmap.PAGESIZE
        self._mm = mmap.mmap(-1, self._head + workers * slots * self.slot_bytes)  # MAP_SHARED | MAP_ANONYMOUS
        self._taken = np.frombuffer(self._mm, np.uint8, workers * slots)  # 1 while a worker or a batch holds it
        self.fallbacks = 0  # batches a worker sent through the pipe instead (counted in that worker)
        self.received = 0  # batches the trainer took out of slots

    def __getstate__(self) -> dict:
        raise TypeError("a BatchRing is inherited by forked workers, never pickled")

    def _array(self, worker: int, slot: int, nbytes: int) -> np.ndarray:
        start = self._head + (worker * self.slots + slot) * self.slot_bytes
        return np.frombuffer(self._mm, np.uint8, nbytes, start)

    def acquire(self, worker: int, nbytes: int) -> tuple[int, np.ndarray] | None:
        """In worker ``worker``: a free slot of its own and its first ``nbytes`` bytes, or None."""
        if nbytes > self.slot_bytes:
            return None
        mine = self._taken[worker * self.slots:(worker + 1) * self.slots]
        free = np.flatnonzero(mine == 0)
        if not len(free):
            return None
        slot = int(free[0])
        mine[slot] = 1
        return slot, self._array(worker, slot, nbytes)

    def release(self, worker: int, slot: int) -> None:
        self._taken[worker * self.slots + slot] = 0

    def receive(self, worker: int, slot: int, nbytes: int) -> np.ndarray:
        """In the trainer: the slot's bytes, as an array whose death frees the slot."""
        array = self._array(worker, slot, nbytes)
        self.received += 1
        weakref.finalize(array, self.release, worker, slot)
        return array


def make_ring(workers: int, prefetch: int, batch_bytes: int | None) -> BatchRing | None:
    """A ring for ``workers`` forked workers (:mod:`motiondata.loader.worker_pool`) that each run up to
    ``prefetch`` batches ahead, or None when batches cannot be sized (shards without a member index)."""
    if workers < 1 or not batch_bytes:
        return None
    # ahead (prefetch), the one just received, the one the training step holds, one spare
    return BatchRing(workers, prefetch + 3, batch_bytes)


def _torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def dtype_name(dtype: np.dtype | torch.dtype) -> str:
    if isinstance(dtype, np.dtype):
        dtype = torch.from_numpy(np.empty(0, dtype)).dtype
    return str(dtype).removeprefix("torch.")


def _view(arena: np.ndarray, dtype: str, shape: list[int], offset: int) -> torch.Tensor:
    """A tensor over ``arena`` bytes (through numpy, 3x cheaper than torch's slice/view/reshape)."""
    kind = _torch_dtype(dtype)
    if kind in NUMPY_OF:
        return torch.from_numpy(np.ndarray(shape, NUMPY_OF[kind], arena, offset))
    nbytes = math.prod(shape) * kind.itemsize  # bfloat16 and other types numpy lacks
    return torch.from_numpy(arena[offset:offset + nbytes]).view(kind).reshape(shape)


def arena_for(specs: list[tuple[str, str, tuple[int, ...]]], ring: BatchRing | None) -> tuple[dict[str, torch.Tensor], dict]:
    """In a worker: one tensor per ``(name, torch dtype name, shape)`` spec, all views of one arena (a
    ring slot when one is free and large enough, else private memory that goes through the pipe), and the
    batch entries that tell :func:`unpack` where they are."""
    views: Views = []
    total = 0
    for name, dtype, shape in specs:
        views.append((name, dtype, list(shape), total))
        total += -(-math.prod(shape) * _torch_dtype(dtype).itemsize // ALIGN) * ALIGN
    total = max(total, 1)
    info = get_worker_info()
    got = ring.acquire(info.id, total) if ring is not None and info is not None else None
    if got is None:
        if ring is not None:
            ring.fallbacks += 1
        arena, where = np.empty(total, np.uint8), {}
        where["__arena__"] = arena
    else:
        slot, arena = got
        where = {"__slot__": (info.id, slot, total)}
    return {name: _view(arena, d, shape, o) for name, d, shape, o in views}, {**where, "__views__": views}


def abandon(where: dict, ring: BatchRing | None) -> None:
    """Give a slot back when its batch failed before it was sent."""
    if ring is not None and "__slot__" in where:
        ring.release(*where["__slot__"][:2])


def shippable(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.device.type == "cpu" and value.layout == torch.strided \
        and not value.requires_grad and not value.is_sparse


def ship(batch: dict[str, Any], ring: BatchRing | None) -> dict[str, Any]:
    """In a worker: a collated batch whose CPU tensors are copied once into one arena (a ring slot)."""
    if not isinstance(batch, dict) or "__views__" in batch:
        return batch
    moved = {k: v for k, v in batch.items() if shippable(v)}
    if not moved:
        return batch
    tensors, where = arena_for([(k, dtype_name(v.dtype), tuple(v.shape)) for k, v in moved.items()], ring)
    try:
        for name, value in moved.items():
            tensors[name].copy_(value)
    except BaseException:
        abandon(where, ring)
        raise
    return {**{k: v for k, v in batch.items() if k not in moved}, **where}


def unpack(batch: dict[str, Any], pin: bool = False, ring: BatchRing | None = None) -> dict[str, Any]:
    """In the trainer: a worker's batch with its fields as views of the arena or ring slot it came in
    (copied once into page-locked memory first when ``pin``, which frees the slot at once)."""
    if "__views__" not in batch:
        return batch
    views = batch.pop("__views__")
    if "__slot__" in batch:
        worker, slot, nbytes = batch.pop("__slot__")
        arena = ring.receive(worker, slot, nbytes)
    else:
        arena = batch.pop("__arena__")
    if pin and torch.cuda.is_available():
        arena = torch.from_numpy(arena).pin_memory().numpy()  # one copy; the slot is free again
    batch.update({name: _view(arena, dtype, shape, offset) for name, dtype, shape, offset in views})
    return batch
