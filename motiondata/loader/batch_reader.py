"""Read a batch straight from local shards by member offset: one copy from the file into the batch.

For each ``.npy`` field of a batch, when every sample holds it with one dtype and shape, the batch array
``(B, *shape)`` is allocated once (page-locked when ``pin=True``; in a worker process, all fields share
one arena, a slot of the loader's shared-memory ring: :mod:`motiondata.loader.batch_ring`) and each
sample's data is read into its row with one ``os.preadv``: no tar header parsing (the offsets come from :mod:`member_index`), no
intermediate ``bytes``, no ``np.stack``. ``.npy`` headers are parsed and checked against the member size
before anything is read (cached per shard and sample). Fields that vary in shape, JSON (``meta``) and
images are decoded per sample and collated by :func:`collate_samples` rules, so a batch here equals the
batch the sequential reader + ``collate_samples`` give (``tests/test_loader.py`` checks it).

A sample the index cannot serve (a malformed ``.npy`` header, a sample past the shard's end) is
``None`` from :meth:`BatchReader.plan`; the caller reads it with the strict sequential reader, which
reports it under the loader's ``on_corrupt`` policy.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import get_worker_info

from motiondata.errors import StoreError
from motiondata.loader.batch_ring import BatchRing, abandon, arena_for, dtype_name
from motiondata.loader.collate import VARIABLE_FIELDS, collate_samples
from motiondata.loader.member_index import ShardIndex, shard_index
from motiondata.loader.shard_reader import ShardInfo
from motiondata.store.npy_member import MAX_HEADER, NPY_MAGIC, _parse_header, decode_member

Plan = dict[str, tuple]  # field -> ("npy", dtype, shape, fd, data offset, nbytes) | ("raw", ext, fd, offset, size)


def _npy_header(fd: int, offset: int, size: int) -> tuple[np.dtype, tuple[int, ...], int] | None:
    """``(dtype, shape, data offset)`` of the ``.npy`` member at ``offset``; None when it is malformed,
    Fortran-ordered, non-native or does not declare exactly the member's size."""
    head = os.pread(fd, min(size, 256), offset)
    if head[:6] != NPY_MAGIC or len(head) < 10 or head[6] not in (1, 2, 3):
        return None
    width = 2 if head[6] == 1 else 4
    length = int.from_bytes(head[8:8 + width], "little")
    start = 8 + width + length
    if length > MAX_HEADER or start > size:
        return None
    if start > len(head):
        head = os.pread(fd, start, offset)
    try:
        dtype, shape, fortran, nbytes = _parse_header(bytes(head[8 + width:start]))
    except StoreError:
        return None
    if fortran or nbytes != size - start or not dtype.isnative:
        return None
    return dtype, shape, offset + start


class BatchReader:
    """Plans and reads batches of ``(shard position, sample index)`` refs of indexed local shards."""

    def __init__(self, shards: Sequence[ShardInfo], fields: set[str] | None, pin: bool = False):
        self.shards, self.fields, self.pin = shards, fields, pin
        self.ring: BatchRing | None = None  # set by the loader before its workers fork
        self._fds: dict[str, int] = {}
        self._pid = os.getpid()

    def index(self, shard: int) -> ShardIndex | None:
        return shard_index(self.shards[shard])

    def _fd(self, path: str) -> int:
        if self._pid != os.getpid():  # a forked worker opens its own descriptors
            self._fds, self._pid = {}, os.getpid()
        if path not in self._fds:
            self._fds[path] = os.open(path, os.O_RDONLY)
        return self._fds[path]

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}

    def __del__(self) -> None:
        if getattr(self, "_pid", None) == os.getpid():
            self.close()

    def plan(self, shard: int, sample: int) -> tuple[str, Plan] | None:
        """``(key, plan)`` of one sample, or None when it must go through the strict reader."""
        index = self.index(shard)
        if index is None or sample >= len(index.samples):
            return None
        key, members = index.samples[sample]
        fd, plan = self._fd(index.path), {}
        for fld, (ext, offset, size) in members.items():
            if self.fields is not None and fld not in self.fields:
                continue
            if ext != "npy":
                plan[fld] = ("raw", ext, fd, offset, size)
                continue
            header = index.headers.get((sample, fld))
            if header is None:
                header = index.headers[(sample, fld)] = _npy_header(fd, offset, size) or ()
            if not header:
                return None
            plan[fld] = ("npy", header[0], header[1], fd, header[2], size - (header[2] - offset))
        return key, plan

    def _alloc(self, shape: tuple[int, ...], dtype: np.dtype) -> torch.Tensor:
        """A batch array read into in-process: page-locked when the batches go to a CUDA device."""
        if self.pin and torch.cuda.is_available():
            return torch.empty(shape, dtype=torch.from_numpy(np.empty(0, dtype)).dtype, pin_memory=True)
        return torch.from_numpy(np.empty(shape, dtype))

    @staticmethod
    def _read_into(row: np.ndarray, fd: int, offset: int, nbytes: int) -> None:
        view = memoryview(row.reshape(-1).view(np.uint8))
        if nbytes and os.preadv(fd, [view], offset) != nbytes:
            raise StoreError(f"short read of {nbytes} bytes at offset {offset} (file changed or truncated)")

    def value(self, entry: tuple) -> Any:
        """One member decoded on its own (a fresh array, or the JSON / image value)."""
        if entry[0] == "npy":
            _, dtype, shape, fd, offset, nbytes = entry
            out = np.empty(shape, dtype)
            self._read_into(out, fd, offset, nbytes)
            return out
        _, ext, fd, offset, size = entry
        return decode_member(ext, os.pread(fd, size, offset))

    def materialize(self, key: str, plan: Plan) -> dict[str, Any]:
        return {"__key__": key, **{fld: self.value(entry) for fld, entry in plan.items()}}

    def _one_copy(self, out: torch.Tensor, entries: list[tuple | None]) -> None:
        rows = out.numpy()
        for i, entry in enumerate(entries):
            if entry is None:
                rows[i] = 0
            else:
                self._read_into(rows[i], entry[3], entry[4], entry[5])

    def _buffers(self, specs: list[tuple[str, np.dtype, tuple[int, ...]]]) -> tuple[dict[str, torch.Tensor], dict | None]:
        """One tensor per spec. In a worker process they are views of one arena: a slot of the loader's
        shared-memory ring (:mod:`motiondata.loader.batch_ring`), or private memory sent through the pipe
        when no slot is free."""
        if get_worker_info() is None:
            return {name: self._alloc(shape, dtype) for name, dtype, shape in specs}, None
        return arena_for([(name, dtype_name(dtype), shape) for name, dtype, shape in specs], self.ring)

    def max_sample_bytes(self) -> int | None:
        """The most bytes of the loader's fields any sample holds once decoded, from the member sizes (other
        than ``.npy``, images: counted 16x, what JPEG/PNG frames decode to at most, about); None when a
        shard has no index."""
        most = 0
        for shard in range(len(self.shards)):
            index = self.index(shard)
            if index is None:
                return None
            most = max(most, max((sum(size if ext == "npy" else 16 * size for fld, (ext, _, size) in members.items()
                                      if self.fields is None or fld in self.fields)
                                  for _, members in index.samples), default=0))
        return most

    def collate(self, planned: list[tuple[str, Plan]]) -> dict[str, Any]:
        """The batch of planned samples (``collate_samples`` semantics); raises ``StoreError`` when their
        arrays disagree (the caller then stands in for the odd samples)."""
        names: list[str] = []
        for _, plan in planned:
            names.extend(n for n in plan if n not in names)
        batch: dict[str, Any] = {"__key__": [key for key, _ in planned]}
        rest, copies, specs = [], {}, []
        for name in names:
            entries = [plan.get(name) for _, plan in planned]
            present = [e for e in entries if e is not None]
            same = all(e[0] == "npy" and e[1] == present[0][1] and e[2] == present[0][2] for e in present)
            if same and name not in VARIABLE_FIELDS:
                copies[name] = entries
                specs.append((name, present[0][1], (len(entries), *present[0][2])))
                if len(present) < len(entries):
                    specs.append((f"{name}.present", np.dtype(bool), (len(entries),)))
            else:
                rest.append(name)
        extra: dict[str, Any] = {}
        if rest:  # ragged fields are padded on every axis when their .len sibling comes along
            rest += [f"{n}.len" for n in rest if f"{n}.len" in names and f"{n}.len" not in rest]
            parts = [{"__key__": key, **{n: self.value(plan[n]) for n in rest if n in plan}} for key, plan in planned]
            extra = {k: v for k, v in collate_samples(parts).items() if k != "__key__" and k not in copies}
        moved = {k: v for k, v in extra.items() if isinstance(v, torch.Tensor)} if get_worker_info() else {}
        tensors, where = self._buffers(specs + [(k, v.numpy().dtype, tuple(v.shape)) for k, v in moved.items()])
        try:
            self._fill(tensors, copies, moved)
        except BaseException:
            abandon(where or {}, self.ring)
            raise
        batch.update({k: v for k, v in extra.items() if k not in moved})
        batch.update(where if where is not None else tensors)
        return batch

    def _fill(self, tensors: dict[str, torch.Tensor], copies: dict[str, list], moved: dict[str, torch.Tensor]) -> None:
        for name, entries in copies.items():
            self._one_copy(tensors[name], entries)
            if f"{name}.present" in tensors:
                tensors[f"{name}.present"].numpy()[:] = [e is not None for e in entries]
        for name, value in moved.items():  # a worker's batch travels as one arena: the rest is copied in
            tensors[name].copy_(value)

