"""``OUT/report.md``: a human-readable report of a store, written at the end of every build."""

from __future__ import annotations

from pathlib import Path

from motiondata.inspect.summary import summarize
from motiondata.store import layout


def _fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in values[:8]) + (", ..." if len(values) > 8 else "") + "]"


def render_report(summary: dict) -> str:
    lines = [f"# motiondata store: {summary['name']}", "",
             f"- store: `{summary['store']}`",
             f"- episodes: {summary.get('num_episodes', len(summary['episodes']))}, "
             f"samples (windows): {summary['samples']}, "
             f"shards: {summary['shards']}, rejected inputs: {summary['errors']}",
             "- stages: " + (", ".join(f"{s['name']} ({s['config_hash']})" for s in summary["stages"]) or "none"),
             "", "## Fields", "", "| field | dtype | shape (first sample) |", "|---|---|---|"]
    for name, desc in sorted(summary["fields"].items()):
        lines.append(f"| `{name}` | {desc.get('dtype', 'json')} | {desc.get('shape', '')} |")
    lines += ["", "## Norm stats", ""]
    for name, st in sorted(summary["stats"].items()):
        lines.append(f"- `{name}` ({len(st['mean'])} dims): mean {_fmt(st['mean'])}, q01 {_fmt(st['q01'])}, "
                     f"q99 {_fmt(st['q99'])}")
    if summary.get("shards_read", summary["shards"]) < summary["shards"]:
        lines += ["", f"Fields and episodes below come from {summary['shards_read']:,} evenly spaced shards of "
                      f"{summary['shards']:,}; `motiondata inspect STORE --json` reads them all."]
    lines += ["", "## Episodes", "", "| episode | windows |", "|---|---|"]
    lines += [f"| {ep} | {n} |" for ep, n in summary["windows_per_episode"].items()]
    if summary["error_records"]:
        lines += ["", "## Rejected inputs", "", "| file | episode | stage | reason |", "|---|---|---|---|"]
        for e in summary["error_records"]:
            lines.append(f"| {e.get('file')} | {e.get('episode')} | {e.get('stage')} | {str(e.get('reason'))[:200]} |")
    return "\n".join(lines) + "\n"


REPORT_SHARDS = 1000  # a build report reads at most this many shard manifests (finalize at 250k shards)


def write_report(out: str | Path) -> Path:
    path = layout.report_file(out)
    text = render_report(summarize(out, max_shards=REPORT_SHARDS))
    if not (path.exists() and path.read_text(encoding="utf-8") == text):
        layout.atomic_write_text(path, text)
    return path
