"""Forked loader workers with the least hand-over: one pipe message per batch, no helper threads.

``WorkerPool(dataset, workers, prefetch)`` forks ``workers`` processes; worker ``w`` iterates the
IterableDataset as DataLoader worker ``w`` would (``torch.utils.data.get_worker_info()`` answers it, and
``random``/``torch``/``numpy`` are seeded as the DataLoader seeds them), and the trainer takes batches
round-robin, batch ``k`` from worker ``k mod workers``: the DataLoader's order for an IterableDataset.

Why not the DataLoader: for every batch it passes an index request to the worker and the batch back
through ``multiprocessing.Queue``s, each with a feeder thread: about 12 context switches and 150 us of
CPU per batch before any data moves (measured in docs/bench/loader_workers.md). Here a worker sends
``(kind, batch)`` with ``Connection.send`` (the arrays are in a ring slot already:
:mod:`motiondata.loader.batch_ring`) and may run ``prefetch`` batches ahead, counted by a semaphore the
trainer releases as it receives.

Failures are one line in the trainer: a motiondata error in a worker is re-raised as it is; any other
exception names the worker (its traceback is attached as a note); a worker that dies (killed by the OS)
closes its pipe, which the trainer reads as end of file and reports. Workers exit when the pool is
closed or garbage-collected (terminated: they only read) and when the trainer process is gone.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import random
import traceback
import weakref
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset
from torch.utils.data._utils import worker as torch_worker

from motiondata.errors import MotionDataError

PARENT_CHECK_S = 1.0  # how often a worker waiting for room checks that the trainer still lives
_END = object()


def _seed(worker: int, workers: int, base_seed: int, dataset: IterableDataset) -> None:
    """What DataLoader does in a worker: seeds, one torch thread, ``get_worker_info()``."""
    seed = base_seed + worker
    random.seed(seed)
    torch.manual_seed(seed)
    np.random.seed(torch_worker._generate_state(base_seed, worker))
    torch.set_num_threads(1)
    torch_worker._worker_info = torch_worker.WorkerInfo(id=worker, num_workers=workers, seed=seed, dataset=dataset)


def _work(dataset: IterableDataset, worker: int, workers: int, base_seed: int, conn: Any, room: Any, parent: int,
          readers: list) -> None:
    for reader in readers:  # read ends inherited from the trainer: with them closed, a send to a gone
        reader.close()      # trainer fails (BrokenPipeError) instead of blocking on a full pipe
    try:
        _seed(worker, workers, base_seed, dataset)
        batches = iter(dataset)
        while True:
            while not room.acquire(timeout=PARENT_CHECK_S):  # room first: at most `prefetch` batches ahead
                if os.getppid() != parent:
                    return
            batch = next(batches, _END)
            if batch is _END:
                break
            conn.send(("batch", batch))
        conn.send(("end", None))
    except (KeyboardInterrupt, BrokenPipeError):
        pass  # Ctrl-C reaches the trainer too; a closed pipe means the pool is gone
    except BaseException as err:  # noqa: BLE001 - sent to the trainer, which raises it
        _report(conn, err)


def _report(conn: Any, err: BaseException) -> None:
    """A motiondata error as it is (type, message, shard/key...), anything else with its traceback."""
    kind = type(err)
    try:
        if isinstance(err, MotionDataError):
            conn.send(("error", (kind.__module__, kind.__qualname__, str(err), dict(vars(err)))))
            return
    except Exception:  # noqa: BLE001 - state that does not pickle: sent as a crash below
        pass
    try:
        conn.send(("crash", (f"{kind.__name__}: {err}".splitlines()[0], traceback.format_exc())))
    except OSError:
        pass


def _rebuild(module: str, qualname: str, message: str, state: dict) -> BaseException:
    """The worker's motiondata error, rebuilt without calling its ``__init__`` (whose arguments differ)."""
    kind = getattr(importlib.import_module(module), qualname, None)
    if not (isinstance(kind, type) and issubclass(kind, MotionDataError)):
        return MotionDataError(message)
    err = kind.__new__(kind)
    BaseException.__init__(err, message)
    err.__dict__.update(state)
    return err


def _stop(procs: list, conns: list) -> None:
    for conn in conns:
        conn.close()
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in procs:
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
            proc.join()


class WorkerPool:
    """Iterator over the batches of ``workers`` forked workers of ``dataset``, round-robin."""

    def __init__(self, dataset: IterableDataset, workers: int, prefetch: int):
        ctx = multiprocessing.get_context("fork")
        base_seed = int(torch.empty((), dtype=torch.int64).random_().item())  # the draw DataLoader makes
        self.procs, self.conns, self._room, self._next = [], [], [], 0
        for worker in range(workers):
            recv, send = ctx.Pipe(duplex=False)
            room = ctx.Semaphore(prefetch)
            proc = ctx.Process(target=_work, name=f"motiondata-loader-{worker}", daemon=True,
                               args=(dataset, worker, workers, base_seed, send, room, os.getpid(), [*self.conns, recv]))
            proc.start()
            send.close()  # the worker's end lives only in the worker: its death reads as end of file here
            self.procs.append(proc)
            self.conns.append(recv)
            self._room.append(room)
        self._finalizer = weakref.finalize(self, _stop, self.procs, self.conns)

    def close(self) -> None:
        self._finalizer()

    def __iter__(self) -> "WorkerPool":
        return self

    def __next__(self) -> Any:
        worker = self._next % len(self.procs)
        try:
            kind, payload = self.conns[worker].recv()
        except (EOFError, OSError):
            proc = self.procs[worker]
            proc.join(timeout=1)
            self.close()
            raise MotionDataError(f"loader worker {worker} (pid {proc.pid}) exited unexpectedly (exit code "
                                  f"{proc.exitcode}: killed by the OS, often for memory); Fix: lower num_workers, "
                                  "prefetch_factor or batch_size, or see dmesg") from None
        self._room[worker].release()
        self._next += 1
        if kind == "batch":
            return payload
        self.close()
        if kind == "end":
            raise StopIteration
        if kind == "error":
            raise _rebuild(*payload)
        err = RuntimeError(f"loader worker {worker} failed: {payload[0]}")
        err.add_note(f"worker traceback:\n{payload[1]}")
        raise err
