"""Benchmark: FastTokenizer.encode (batched) vs the published per-chunk FAST path, same tokenizer, same run.

    .venv/bin/python -m benchmarks.bench_fast [--chunks 10000] [--horizon 10] [--dim 14] [--repeats 3]

Baselines (re-implemented from the published UniversalActionProcessor; ids checked identical):
- ``reference __call__``: one DCT over the batch, then per chunk ``"".join(map(chr, ...))`` and one
  ``PreTrainedTokenizerFast(text)`` call, as the reference ``__call__`` does for a batch.
- ``per-chunk __call__``: the reference called once per chunk (how data loaders use it: one sample at a time).
Writes docs/bench/fast.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np
from scipy.fft import dct, idct

from motiondata.tokenize.fast import FastTokenizer

OUT = Path(__file__).resolve().parent.parent / "docs" / "bench" / "fast.md"


def random_walk(n: int, horizon: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    walk = rng.uniform(-0.7, 0.7, (n, 1, dim)) + np.cumsum(rng.normal(scale=0.08, size=(n, horizon, dim)), axis=1)
    return np.clip(walk, -1, 1).astype(np.float32)


def reference_call(hf, min_token: int, scale: float, batch: np.ndarray) -> list[list[int]]:
    coeff = np.around(dct(batch, axis=1, norm="ortho") * scale)
    out = []
    for elem in coeff:
        text = "".join(map(chr, np.maximum(elem.flatten() - min_token, 0).astype(int)))
        out.append(hf(text)["input_ids"])
    return out


def reference_per_chunk(hf, min_token: int, scale: float, batch: np.ndarray) -> list[list[int]]:
    return [reference_call(hf, min_token, scale, chunk[None])[0] for chunk in batch]


def reference_decode(hf, min_token: int, scale: float, ids_list, t: int, d: int) -> np.ndarray:
    out = []
    for ids in ids_list:
        coeff = (np.array(list(map(ord, hf.decode(ids)))) + min_token).reshape(t, d)
        out.append(idct(coeff / scale, axis=0, norm="ortho"))
    return np.stack(out)


def best_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def machine_info() -> dict[str, str]:
    import tokenizers
    import torch
    import transformers

    return {"cpu cores (os.cpu_count)": str(os.cpu_count()), "torch threads": str(torch.get_num_threads()),
            "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
            "tokenizers": tokenizers.__version__, "transformers": transformers.__version__,
            "numpy": np.__version__}


def run(chunks: int, horizon: int, dim: int, repeats: int) -> tuple[list[tuple[str, float]], dict]:
    from transformers import PreTrainedTokenizerFast

    tok = FastTokenizer.fit(random_walk(2000, horizon, dim, seed=0), scale=10, vocab_size=1024)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok.bpe, clean_up_tokenization_spaces=False)
    data = random_walk(chunks, horizon, dim, seed=1)
    args = (hf, tok.min_token, tok.scale, data)
    rows: list[tuple[str, float]] = []
    t_ref, ref_ids = best_time(lambda: reference_call(*args), repeats)
    t_chunk, chunk_ids = best_time(lambda: reference_per_chunk(*args), max(1, repeats - 1))
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    t_mine, ids = best_time(lambda: tok.encode(data), repeats)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    t_single, ids_single = best_time(lambda: tok.encode(data), repeats)
    if not (ids == ref_ids == chunk_ids == ids_single):
        raise SystemExit("ids differ from the reference path: the benchmark is invalid")
    rows += [("reference __call__ (batch DCT, per-chunk HF call)", t_ref), ("per-chunk __call__", t_chunk),
             ("FastTokenizer.encode (Rust threads on)", t_mine), ("FastTokenizer.encode (1 thread)", t_single)]
    t_dec_ref, _ = best_time(lambda: reference_decode(hf, tok.min_token, tok.scale, ids, horizon, dim), repeats)
    t_dec, _ = best_time(lambda: tok.decode(ids, horizon, dim), repeats)
    rows += [("reference decode (per chunk)", t_dec_ref), ("FastTokenizer.decode (1 thread)", t_dec)]
    lengths = np.array([len(i) for i in ids])
    info = {"chunks": chunks, "horizon": horizon, "dim": dim, "vocab": tok.bpe_vocab_size,
            "tokens_mean": float(lengths.mean()), "compression": horizon * dim / float(lengths.mean())}
    return rows, info


def report(rows: list[tuple[str, float]], info: dict, machine: dict[str, str]) -> str:
    times = dict(rows)
    n = info["chunks"]
    lines = ["# FAST tokenizer benchmark", "",
             f"{n} chunks of {info['horizon']} x {info['dim']} (smooth random walk in [-1, 1]), BPE vocabulary "
             f"{info['vocab']}, {info['tokens_mean']:.1f} tokens/chunk ({info['compression']:.1f}x fewer than "
             "one token per value). Ids identical on every path (checked). Best of repeats.", "",
             "| path | seconds | chunks/s | speed-up vs reference __call__ | vs per-chunk __call__ |",
             "|---|---:|---:|---:|---:|"]
    ref, per_chunk = times["reference __call__ (batch DCT, per-chunk HF call)"], times["per-chunk __call__"]
    for name, seconds in rows:
        base_ref = times["reference decode (per chunk)"] if "decode" in name else ref
        base_chunk = "" if "decode" in name else f"{per_chunk / seconds:.1f}x"
        lines.append(f"| {name} | {seconds:.4f} | {n / seconds:,.0f} | {base_ref / seconds:.1f}x | {base_chunk} |")
    lines += ["", "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()), "",
              "Run: `.venv/bin/python -m benchmarks.bench_fast`", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=10000)
    parser.add_argument("--horizon", type=int, default=10)
    parser.add_argument("--dim", type=int, default=14)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    machine = machine_info()
    print("machine:", machine)
    rows, info = run(args.chunks, args.horizon, args.dim, args.repeats)
    text = report(rows, info, machine)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
