"""Run every benchmark (`make bench`) and assemble docs/benchmarks.md from the sections they write
to docs/bench/*.md. Each benchmark compares against the tool users would otherwise use, in the same run."""

from __future__ import annotations

import argparse
import importlib
import logging
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["fast", "encode", "keyframes", "flow", "flow_validity", "decode", "loader", "loader_workers", "train", "recipes", "incremental", "scale", "finalize"]  # finalize appends its table to scale.md
HEADER = """# Benchmarks

Measured numbers only; every ratio compares motiondata with the tool users would otherwise use, timed in
the same run on the same machine. Rerun all with `make bench` (or one with
`.venv/bin/python -m benchmarks.bench_<name>`); each writes its section to `docs/bench/<name>.md` and this
page is assembled from them by `benchmarks/run_all.py`.

"""


def assemble() -> Path:
    parts = [HEADER]
    for name in ORDER + sorted(p.stem for p in (ROOT / "docs/bench").glob("*.md") if p.stem not in ORDER):
        section = ROOT / "docs" / "bench" / f"{name}.md"
        if section.exists():
            parts.append(section.read_text(encoding="utf-8").strip() + "\n\n")
    out = ROOT / "docs" / "benchmarks.md"
    out.write_text("".join(parts), encoding="utf-8")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", default=None, help="benchmark names to run (default: all)")
    parser.add_argument("--assemble-only", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    if not args.assemble_only:
        for name in args.only or ORDER:
            logging.info("running benchmarks.bench_%s on %s", name, platform.processor() or platform.machine())
            module = importlib.import_module(f"benchmarks.bench_{name}")
            module.main([]) if _takes_argv(module.main) else module.main()
    logging.info("wrote %s", assemble())


def _takes_argv(func) -> bool:
    import inspect

    return len(inspect.signature(func).parameters) > 0


if __name__ == "__main__":
    main()
