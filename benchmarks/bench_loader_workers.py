"""Benchmark: do loader workers add throughput? CPU per sample in-process vs 1 and 2 workers (issue 13, item 6).

    .venv/bin/python -m benchmarks.bench_loader_workers [--samples 256] [--seconds 1.5] [--rounds 3]

Store: the stand-in of benchmarks.bench_loader (``latent_store``: shapes of a Wan 2.2 + FAST + VQGAN + flow
build, ~173 KB and 23 members per sample, 64 samples per shard), page cache warm, batch 32, every field
("all") and the latent inputs only ("latent"). CPU per sample = CPU seconds of the trainer process plus
its live worker processes (psutil, read from /proc while they run, so worker start-up is left out)
divided by the samples delivered. Transports, same run, rounds interleaved, median reported:

- *before*: torch DataLoader workers, each batch one array pickled through the worker's pipe (the path
  before this change, rebuilt here from the same dataset with no ring);
- *ring only*: DataLoader workers writing batches into the shared-memory ring (batch_ring);
- *after*: the StreamingLoader default, forked workers (worker_pool) + the ring.

Raw read (shard files front to back, 1 MiB reads) is the ceiling. Writes docs/bench/loader_workers.md.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import psutil
import torch
from torch.utils.data import DataLoader

from benchmarks.bench_loader import latent_store, machine_info

ROOT = Path(__file__).resolve().parent.parent
OUT_MD = ROOT / "docs" / "bench" / "loader_workers.md"
FIELDS = {"all": ["vae.latents", "motion.zm", "text.embedding", "flow.tracks", "flow.valid", "fast.tokens",
                  "keyframes.codes", "actions", "meta"],
          "latent": ["vae.latents", "motion.zm", "text.embedding"]}
TRANSPORTS = ("before", "ring only", "after")
log = logging.getLogger("bench_loader_workers")


def _cpu_seconds() -> float:
    """CPU seconds of this process and its live children (worker processes)."""
    me, total = psutil.Process(), 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def _dataloader_batches(fields: list[str], store: Path, workers: int, ring: bool) -> Iterator[dict]:
    """Batches through torch DataLoader workers (the transport before worker_pool), with or without the ring."""
    from motiondata.loader.batch_ring import make_ring, unpack
    from motiondata.loader.member_index import warm
    from motiondata.loader.streaming import StreamingLoader, _as_is

    ds = StreamingLoader(store, 32, fields, shuffle_buffer=256).dataset
    warm(ds.shards)
    made = make_ring(workers, 4, ds.batch_bytes()) if ring else None
    ds.reader.ring = made
    loader = DataLoader(ds, batch_size=None, num_workers=workers, collate_fn=_as_is, prefetch_factor=4)
    return (unpack(b, False, made) for b in loader)


def _batches(transport: str, fields: list[str], store: Path, workers: int) -> Iterator[dict]:
    from motiondata.loader.streaming import StreamingLoader

    if workers and transport != "after":
        return _dataloader_batches(fields, store, workers, ring=transport == "ring only")
    loader = StreamingLoader(store, 32, fields, num_workers=workers, shuffle_buffer=256)
    return (b for _ in iter(int, 1) for b in loader)  # epoch after epoch


def measure(transport: str, fields: list[str], store: Path, workers: int, seconds: float) -> tuple[float, float]:
    """(samples/s, CPU us per sample) of one setting, after 3 batches per worker of warm-up."""
    batches = _batches(transport, fields, store, workers)
    for _ in range(3 * max(workers, 1)):
        next(batches)
    cpu0, done, start = _cpu_seconds(), 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        done += len(next(batches)["__key__"])
    elapsed, cpu = time.perf_counter() - start, _cpu_seconds() - cpu0
    batches.close()
    return done / elapsed, 1e6 * cpu / done


def raw_rate(store: Path, seconds: float) -> float:
    from benchmarks.bench_train import raw_rate as raw

    return raw(store, seconds)[0]


def table(store: Path, seconds: float, rounds: int) -> dict[tuple[str, str, int], tuple[float, float]]:
    settings = [(t, w) for w in (1, 2) for t in TRANSPORTS] + [("after", 0)]
    runs: dict[tuple[str, str, int], list] = {}
    for _ in range(rounds):
        for label, fields in FIELDS.items():
            for transport, workers in settings:
                runs.setdefault((label, transport, workers), []).append(measure(transport, fields, store, workers, seconds))
    return {k: tuple(np.median(np.array(v), axis=0)) for k, v in runs.items()}


def report(info: dict, res: dict, raw: float, samples: int, seconds: float, rounds: int) -> str:
    lines = ["# Loader workers: CPU per sample", "",
             "`.venv/bin/python -m benchmarks.bench_loader_workers` — all numbers from one run, page cache warm.", "",
             "| machine | |", "|---|---|", *[f"| {k} | {v} |" for k, v in info.items()], "",
             f"Stand-in store of {samples} samples (benchmarks.bench_loader `latent_store`), batch 32; CPU = trainer "
             "process + live workers (psutil, start-up left out) / samples delivered; median of "
             f"{rounds} interleaved rounds of {seconds:.1f} s. Raw read of the shard files: {raw:,.0f} samples/s.", "",
             "| fields | workers | transport | samples/s | % raw | CPU us/sample | CPU vs in-process |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for label in FIELDS:
        rate0, cpu0 = res[(label, "after", 0)]
        lines.append(f"| {label} | 0 | in-process | {rate0:,.0f} | {100 * rate0 / raw:.1f} % | {cpu0:.0f} | 1.00x |")
        for workers in (1, 2):
            for transport in TRANSPORTS:
                rate, cpu = res[(label, transport, workers)]
                lines.append(f"| {label} | {workers} | {transport} | {rate:,.0f} | {100 * rate / raw:.1f} % | "
                             f"{cpu:.0f} | {cpu / cpu0:.2f}x |")
    lines += ["", "*before*: DataLoader workers, each batch one array pickled through the worker's pipe; *ring only*: "
              "DataLoader workers writing into the shared-memory ring (`motiondata/loader/batch_ring.py`); *after*: "
              "the default, forked workers handing over ring slots (`motiondata/loader/worker_pool.py`). Target: "
              "CPU per sample with workers within 1.3x of in-process. Worker throughput depends on free cores: "
              "this machine's cores are shared with other jobs."]
    return "\n".join(lines) + "\n"


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=1.5, help="timing per setting and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(OUT_MD))
    args = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench_workers_") as tmp:
        windows = [(f"demo_{i // 16}", (i % 16) * 4, 17) for i in range(args.samples)]
        store = latent_store(windows, Path(tmp) / "store", per_shard=64, zarr=False)
        raw = raw_rate(store, args.seconds)
        res = table(store, args.seconds, args.rounds)
    text = report(machine_info(), res, raw, args.samples, args.seconds, args.rounds)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    log.info("wrote %s\n%s", args.out, text)


if __name__ == "__main__":
    main()
