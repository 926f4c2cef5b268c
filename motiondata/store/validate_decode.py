"""``motiondata validate STORE --decode N``: decode spot checks with the store's own models.

For every decodable stage, ``N`` rows (windows) are sampled with a fixed seed across the episodes the stage
ran on, and decoded back:

    stage       figure                                           fails when
    vae         PSNR of the reconstruction vs the stored frames  mean PSNR of a row's frames < vae_psnr
    keyframes   PSNR of the VQGAN decode vs the stored frame      PSNR < keyframe_psnr
    fast        max |round trip - actions| (normalised units)    > 0.5 / scale * sqrt(T) (the rounding bound)
    flow        share of valid point-steps of a query frame      < flow_valid
                (over the steps the episode has frames for)

A causal VAE row needs its history, so VAE rows are sampled among the first ``max_latents`` latent frames
of an episode (the decode runs from frame 0). Thresholds come from the flags, else the spec's
``validate: {decode: {...}}`` block, else ``DEFAULTS``. Every failure names the stage, the episode, the
frame and the figure. The figures (PNG) go to ``OUT/decode/`` and a "Decode checks" section of
``report.md``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from motiondata.errors import MotionDataError
from motiondata.inspect import decode_checks as dc
from motiondata.inspect.episode_data import DECODE_ERRORS, StoreData, episode_tables, load_store
from motiondata.pipeline.tables import Table
from motiondata.store.layout import atomic_write_text

log = logging.getLogger(__name__)
DEFAULTS = {"vae_psnr": 20.0, "keyframe_psnr": 18.0, "flow_valid": 0.2, "fast_slack": 1.0}
SECTION = "## Decode checks (`motiondata validate --decode`)"
SEED = 0


@dataclass
class DecodeReport:
    checks: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=dict)


def thresholds(store: StoreData, overrides: dict[str, float | None] | None = None) -> dict[str, float]:
    spec = (store.manifest.get("spec") or {}).get("validate") or {}
    from_spec = spec.get("decode") if isinstance(spec.get("decode"), dict) else {}
    merged = {**DEFAULTS, **{k: float(v) for k, v in from_spec.items() if k in DEFAULTS}}
    merged.update({k: float(v) for k, v in (overrides or {}).items() if v is not None})
    return merged


def _kind(stage: Any) -> str | None:
    from motiondata.encode.flow_stage import FlowStage
    from motiondata.encode.keyframes import KeyframeStage
    from motiondata.encode.vae import VaeStage
    from motiondata.tokenize.stage import FastStage

    for cls, kind in ((VaeStage, "vae"), (KeyframeStage, "keyframes"), (FastStage, "fast"), (FlowStage, "flow")):
        if isinstance(stage, cls):
            return kind
    return None


def _table_name(kind: str, stage: Any) -> str:
    prefix = getattr(stage, "prefix", None) or {"vae": "vae", "keyframes": "keyframes", "fast": "fast",
                                                 "flow": "flow"}[kind]
    return {"vae": f"{prefix}.latents", "keyframes": f"{prefix}.codes", "fast": f"{prefix}.tokens",
            "flow": f"{prefix}.tracks"}[kind]


def _candidates(store: StoreData, bound: Any, kind: str, max_latents: int) -> list[tuple[str, int]]:
    """Every (episode, row) the stage could be checked at (VAE: rows within ``max_latents``)."""
    from motiondata.store.episodes_zarr import episode_attrs

    name, found = _table_name(kind, bound.stage), []
    for episode in store.episodes:
        attrs = episode_attrs(store.out, episode)
        if not bound.applies_to(str(attrs.get("source"))):
            continue
        info = (attrs.get("tables") or {}).get(name)
        rows = len(info["frames"]) if info and info.get("frames") is not None else len(attrs.get("windows") or [])
        limit = min(rows, max_latents) if kind == "vae" else rows
        found += [(episode, r) for r in range(limit)]
    return found


def _subset(tables: dict[str, Table], names: list[str], rows: list[int]) -> dict[str, Table]:
    out = dict(tables)
    for name in names:
        t = tables.get(name)
        if t is not None:
            out[name] = Table(t.values[rows], t.frames[rows], t.axis, None if t.lengths is None else t.lengths[rows])
    return out


def _check_rows(kind: str, stage: Any, tables: dict[str, Table], rows: list[int], attrs: dict) -> list[dict]:
    """One result per sampled row: ``{"frame", "value"}`` (PSNR dB, error or valid share) plus extras."""
    name = _table_name(kind, stage)
    sub = _subset(tables, [name, name.replace(".tracks", ".valid"), name.replace(".tokens", ".chunk_mask")], rows)
    if kind == "keyframes":
        c = dc.keyframe_check(stage, sub)
        return [{"frame": int(f), "value": float(v), "check": c} for f, v in zip(c.frames, c.psnr)]
    if kind == "fast":
        c = dc.fast_check(stage, sub, float(attrs.get("fps") or 1))
        return [{"frame": int(f), "value": float(v), "bound": c.bound, "check": c} for f, v in zip(c.starts, c.error)]
    c = dc.flow_check(stage, sub)
    length, steps = int(attrs.get("length") or 0), c.valid.shape[-1]
    out = []
    for q, valid in zip(c.queries, c.valid):  # only the steps the episode has frames for can be valid
        usable = steps if stage.resample_path is not None or not length else min(steps, length - 1 - int(q))
        if usable > 0:
            out.append({"frame": int(q), "value": float(valid[:, :usable].mean()), "check": c})
    return out


def _verdict(kind: str, result: dict, limits: dict[str, float]) -> str | None:
    value = result["value"]
    if kind == "vae" and value < limits["vae_psnr"]:
        return f"VAE reconstruction PSNR {value:.1f} dB < {limits['vae_psnr']:.1f} dB"
    if kind == "keyframes" and value < limits["keyframe_psnr"]:
        return f"VQGAN keyframe PSNR {value:.1f} dB < {limits['keyframe_psnr']:.1f} dB"
    if kind == "fast" and value > result["bound"] * limits["fast_slack"] + 1e-6:
        return (f"FAST round-trip error {value:.4f} > bound 0.5/scale*sqrt(T) = {result['bound']:.4f} "
                "(normalised units)")
    if kind == "flow" and value < limits["flow_valid"]:
        return f"flow valid share {value:.1%} < {limits['flow_valid']:.0%}"
    return None


def _figure(kind: str, result: dict, folder: Path, stem: str) -> str | None:
    from motiondata.inspect import view_plots as vp

    check = result["check"]
    if kind == "vae":
        cols = vp.pick(len(check.frames))
        return vp.mosaic([check.original[cols], check.recon[cols]], folder, f"{stem}.png")
    if kind == "keyframes":
        return vp.mosaic([check.original, check.decoded], folder, f"{stem}.png")
    if kind == "flow":
        return vp.flow_figure(check, folder, f"{stem}.png")
    return None


FIXES = {"vae": "check the VAE checkpoint and `size`/`cameras` of the stage, or lower --min-vae-psnr",
         "keyframes": "check the VQGAN config/weights and `size`, or lower --min-keyframe-psnr",
         "fast": "refit the tokenizer on these actions (`motiondata fit-fast`) with their norm stats",
         "flow": "check the tracker, depth and camera of the flow stage, or lower --min-flow-valid"}


def _vae_rows(stage: Any, tables: dict[str, Table], name: str, rows: list[int]) -> list[dict]:
    table = tables[name]
    if table.axis == "clip":  # independent clips: decode each sampled clip alone
        out = []
        for r in rows:
            check = next(c for c in dc.vae_check(stage, _subset(tables, [name], [r]), 1) if c.name == name)
            out.append({"frame": int(table.frames[r]), "value": float(check.psnr.mean()), "check": check})
        return out
    check = next(c for c in dc.vae_check(stage, tables, max(rows) + 1) if c.name == name)
    out = []
    for r in rows:
        lo = 0 if r == 0 else int(table.frames[r - 1]) + 1
        sel = (check.frames >= lo) & (check.frames <= int(table.frames[r]))
        out.append({"frame": int(table.frames[r]), "value": float(check.psnr[sel].mean()), "check": check})
    return out


def _check_episode(report: DecodeReport, kind: str, stage: Any, store: StoreData, episode: str,
                   rows: list[int], folder: Path | None) -> None:
    name = _table_name(kind, stage)
    try:
        tables, attrs = episode_tables(store.out, episode)
        results = _vae_rows(stage, tables, name, rows) if kind == "vae" else \
            _check_rows(kind, stage, tables, rows, attrs)
    except DECODE_ERRORS as exc:
        report.problems.append(f"decode check: stage {kind} ({name}), episode {episode}: decode failed: "
                               f"{type(exc).__name__}: {dc.one_line(exc)}; {FIXES[kind]}")
        return
    for i, result in enumerate(results):
        problem = _verdict(kind, result, report.thresholds)
        figure = None
        if folder is not None and (i == 0 or problem):
            figure = _figure(kind, result, folder, f"{kind}_{name}_{episode}_{result['frame']}")
        entry = {"stage": kind, "table": name, "episode": episode, "frame": result["frame"],
                 "value": round(result["value"], 5), "ok": problem is None,
                 "figure": f"decode/{figure}" if figure else None}
        report.checks.append(entry)
        if problem:
            report.problems.append(f"decode check: stage {kind} ({name}), episode {episode}, frame "
                                   f"{result['frame']}: {problem}; {FIXES[kind]}")


def _sample(candidates: list[tuple[str, int]], n: int, rng: np.random.Generator) -> dict[str, list[int]]:
    picks = sorted(candidates[i] for i in rng.choice(len(candidates), min(n, len(candidates)), replace=False))
    grouped: dict[str, list[int]] = {}
    for episode, row in picks:
        grouped.setdefault(episode, []).append(row)
    return grouped


def validate_decode(out: str | Path, n: int, overrides: dict[str, float | None] | None = None,
                    max_latents: int = 8, write_figures: bool = True) -> DecodeReport:
    """Decode ``n`` sampled rows per stage; problems name the stage, episode, frame and figure."""
    if n < 1:
        raise MotionDataError(f"--decode {n}: pass the number of windows to check per stage, e.g. --decode 4")
    store = load_store(out)
    report = DecodeReport(thresholds=thresholds(store, overrides))
    folder = Path(out) / "decode" if write_figures else None
    if folder is not None:
        folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(SEED)
    for bound in store.stages:
        kind = _kind(bound.stage)
        candidates = _candidates(store, bound, kind, max_latents) if kind else []
        for episode, rows in _sample(candidates, n, rng).items() if candidates else ():
            _check_episode(report, kind, bound.stage, store, episode, rows, folder)
    if write_figures:
        write_decode_section(out, report)
    return report


def render_section(report: DecodeReport) -> str:
    lines = [SECTION, "", "thresholds: " + ", ".join(f"{k} {v:g}" for k, v in sorted(report.thresholds.items())),
             "", "| stage | table | episode | frame | value | ok |", "|---|---|---|---|---|---|"]
    lines += [f"| {c['stage']} | `{c['table']}` | {c['episode']} | {c['frame']} | {c['value']:.4g} | "
              f"{'ok' if c['ok'] else '**FAIL**'} |" for c in report.checks]
    lines += ["", *[f"- {p}" for p in report.problems]] if report.problems else []
    figures = [c for c in report.checks if c["figure"]]
    lines += ["", *[f"![{c['stage']} {c['episode']} frame {c['frame']}]({c['figure']})" for c in figures]]
    return "\n".join(lines) + "\n"


def write_decode_section(out: str | Path, report: DecodeReport) -> Path:
    """Replace (or add) the decode-check section of ``report.md``; also ``decode/decode_checks.json``."""
    path = Path(out) / "report.md"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    head = text.split(SECTION)[0].rstrip("\n")
    atomic_write_text(path, (head + "\n\n" if head else "") + render_section(report))
    document = {"checks": report.checks, "problems": report.problems, "thresholds": report.thresholds}
    atomic_write_text(Path(out) / "decode" / "decode_checks.json", json.dumps(document, indent=1, sort_keys=True))
    return path
