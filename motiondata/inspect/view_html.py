"""``motiondata view STORE --out DIR``: a self-contained, offline HTML report of a store.

    DIR/index.html                     every episode (source, length, PSNRs, FAST error, flow valid share,
                                       error records) with filters; rejected inputs; stages and versions
    DIR/episodes/<id>/index.html       one episode on one time axis: raw frames beside VAE reconstructions,
                                       VQGAN keyframes beside the originals, flow tracks, z_m heatmaps,
                                       actions vs their FAST round trip, text neighbours, records, stats
    DIR/episodes/<id>/*.png|*.gif      the figures (files beside the page; nothing is fetched)
    DIR/view.json                      the index figures as JSON (and the render time of each episode)

Inline CSS and JS only, no CDN, no network. Section ids: ``frames``, ``keyframes``, ``flow``, ``motion``,
``actions``, ``text``, ``records``; each carries ``data-stage`` (the stage or table it shows).
"""

from __future__ import annotations

import html
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from motiondata.inspect import view_plots as vp
from motiondata.inspect.episode_data import EpisodeData, StoreData, load_episode, load_store
from motiondata.inspect.view_assets import CSS, INDEX_JS
from motiondata.store.layout import atomic_write_text

log = logging.getLogger(__name__)
esc = html.escape


@dataclass
class ViewResult:
    index: Path
    pages: dict[str, Path] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    total_seconds: float = 0.0


def _page(title: str, body: str, script: str = "") -> str:
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{CSS}</style></head>"
            f"<body>{body}{f'<script>{script}</script>' if script else ''}</body></html>\n")


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) >= 0.01 or value == 0 else f"{value:.2e}"
    return esc(str(value))


def _img(name: str, alt: str) -> str:
    return f"<img src='{esc(name)}' alt='{esc(alt)}' loading='eager'>"


def _section(sid: str, title: str, stage: str, body: str) -> str:
    return f"<section id='{sid}' data-stage='{esc(stage)}'><h2>{esc(title)}</h2>{body}</section>"


def _kv_table(rows: list[tuple[str, Any]]) -> str:
    cells = "".join(f"<tr><th>{esc(str(k))}</th><td>{_fmt(v, 3)}</td></tr>" for k, v in rows)
    return f"<table class='kv'>{cells}</table>"


def frames_section(data: EpisodeData, folder: Path) -> str:
    parts = []
    cams = data.cameras
    for c in data.vae:
        cols = vp.pick(len(c.frames))
        name = vp.mosaic([c.original[cols], c.recon[cols]], folder, f"vae_{c.name}.png")
        gif = vp.strip_gif(c.original, c.recon, folder, f"vae_{c.name}.gif", float(data.attrs.get("fps") or 10))
        labels = ", ".join(f"{int(c.frames[i])}: {c.psnr[i]:.1f} dB" for i in cols)
        parts.append(f"<h3>{esc(c.name)} ({esc('+'.join(c.cameras))}): mean PSNR {c.psnr.mean():.1f} dB, "
                     f"min {c.psnr.min():.1f} dB over {len(c.frames)} decoded frames</h3>"
                     f"<p class='cap'>top: stored frames, bottom: decoded with the store's VAE; "
                     f"frame: PSNR = {esc(labels)}</p>{_img(name, 'raw vs VAE reconstruction')}"
                     f"<p class='cap'>animated: stored | reconstruction</p>{_img(gif, 'strip')}")
    shown = {cam for c in data.vae for cam in c.cameras}
    for cam, frames in cams.items():
        if cam not in shown:
            cols = vp.pick(len(frames))
            name = vp.mosaic([frames[cols]], folder, f"rgb_{cam}.png")
            parts.append(f"<h3>rgb.{esc(cam)} (no VAE)</h3><p class='cap'>frames {esc(str(cols.tolist()))}</p>"
                         f"{_img(name, f'raw {cam}')}")
    return _section("frames", "Frames and VAE reconstructions", ",".join(c.name for c in data.vae) or "rgb",
                    "".join(parts) or "<p>no frames stored</p>")


def keyframes_section(data: EpisodeData, folder: Path) -> str:
    parts = []
    for c in data.keyframes:
        cols = vp.pick(len(c.frames), 10)
        name = vp.mosaic([c.original[cols], c.decoded[cols]], folder, f"keyframes_{c.name}.png")
        labels = ", ".join(f"{int(c.frames[i])}: {c.psnr[i]:.1f} dB" for i in cols)
        parts.append(f"<h3>{esc(c.name)} on {esc(c.camera)}: mean PSNR {c.psnr.mean():.1f} dB over "
                     f"{len(c.frames)} keyframes</h3><p class='cap'>top: stored frame (resized to the model), "
                     f"bottom: VQGAN decode of the stored codes; frame: PSNR = {esc(labels)}</p>"
                     f"{_img(name, 'keyframes')}")
    return _section("keyframes", "VQGAN keyframes", ",".join(c.name for c in data.keyframes), "".join(parts))


def flow_section(data: EpisodeData, folder: Path) -> str:
    parts = []
    for c in data.flow:
        name = vp.flow_figure(c, folder, f"flow_{c.name}.png")
        parts.append(f"<h3>{esc(c.name)} on {esc(c.camera)}: {c.valid_share:.1%} of point-steps valid over "
                     f"{len(c.queries)} query frames</h3><p class='cap'>tracks of the {c.paths.shape[1]}-point "
                     f"grid, coloured by summed dd (blue: towards the camera, red: away); red x: point invalid "
                     f"from its first step</p>{_img(name, 'flow tracks')}")
    return _section("flow", "Scene flow", ",".join(c.name for c in data.flow), "".join(parts))


def motion_section(data: EpisodeData, folder: Path) -> str:
    parts = []
    for prefix, maps in data.motion.items():
        name = vp.motion_figure(prefix, maps, folder, f"motion_{prefix}.png")
        parts.append(f"<h3>{esc(prefix)}: {len(maps['frames'])} latent steps</h3>{_img(name, 'z_m heatmaps')}")
    return _section("motion", "Motion latents z_m", ",".join(data.motion), "".join(parts))


def actions_section(data: EpisodeData, folder: Path) -> str:
    parts = []
    for c in data.fast:
        field = c.name.rsplit(".", 1)[0]
        actions = next((t.values for n, t in data.tables.items() if n == "actions" and t.axis == "frame"), c.raw[0])
        fig = vp.actions_figure(c, np.asarray(actions, np.float32), folder, f"actions_{c.name}.png")
        bar = vp.tokens_figure(c, folder, f"tokens_{c.name}.png")
        ids = "".join(f"<tr><td>{int(s)}</td><td>{len(t)}</td><td class='mono'>{esc(' '.join(map(str, t[:24])))}"
                      f"{' ...' if len(t) > 24 else ''}</td><td>{e:.4f}</td><td>{r:.4f}</td></tr>"
                      for s, t, e, r in zip(c.starts, c.tokens, c.error, c.error_raw))
        verdict = "within" if c.error.max() <= c.bound + 1e-9 else "ABOVE"
        parts.append(f"<h3>{esc(field)}: max round-trip error {c.error.max():.4f} (normalised), "
                     f"{c.error_raw.max():.4f} (action units); {verdict} the rounding bound {c.bound:.4f}</h3>"
                     f"{''.join(f'<p class=bad>{esc(p)}</p>' for p in c.problems)}"
                     f"{_img(fig, 'actions vs FAST round trip')}{_img(bar, 'tokens per chunk')}"
                     "<table><tr><th>chunk start</th><th>tokens</th><th>ids</th><th>max err (norm)</th>"
                     f"<th>max err (raw)</th></tr>{ids}</table>")
    return _section("actions", "Actions and FAST tokens", ",".join(c.name for c in data.fast), "".join(parts))


def text_section(data: EpisodeData) -> str:
    rows = "".join(f"<tr><td><a href='../{esc(e)}/index.html'>{esc(e)}</a></td><td>{s:.3f}</td></tr>"
                   for e, s in data.neighbours)
    body = (f"<p class='lang'>{esc(str(data.attrs.get('language') or '(no instruction)'))}</p>"
            + (f"<table><tr><th>nearest episode (text embedding)</th><th>cosine</th></tr>{rows}</table>"
               if rows else "<p>no other episode has a text embedding</p>"))
    return _section("text", "Instruction", "text", body)


def records_section(data: EpisodeData, store: StoreData, seconds: float | None = None) -> str:
    errors = "".join(f"<tr><td>{esc(str(e.get('stage')))}</td><td>{esc(str(e.get('file')))}</td>"
                     f"<td>{esc(str(e.get('reason')))}</td></tr>" for e in data.errors)
    problems = "".join(f"<p class='bad'>{esc(p)}</p>" for p in data.problems)
    attrs = [(k, json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in sorted(data.attrs.items())]
    stages = [(s.get("name"), s.get("config_hash")) for s in store.manifest.get("stages", [])]
    software = sorted((store.manifest.get("software") or {}).items())
    body = (problems + ("<h3>errors.jsonl records</h3><table><tr><th>stage</th><th>file</th><th>reason</th></tr>"
                        f"{errors}</table>" if errors else "<p>no errors.jsonl records for this episode</p>")
            + "<h3>episode</h3>" + _kv_table(attrs + [("samples", data.samples)])
            + "<h3>stage versions (manifest)</h3>" + _kv_table(stages + software))
    return _section("records", "Records, attributes and versions", "manifest", body)


def render_episode(store: StoreData, episode: str, dest: Path, max_latents: int | None = 8) -> tuple[Path, dict]:
    start = time.perf_counter()
    data = load_episode(store, episode, max_latents)
    folder = dest / "episodes" / episode
    folder.mkdir(parents=True, exist_ok=True)
    head = (f"<nav><a href='../../index.html'>all episodes</a></nav><h1>{esc(episode)}</h1>"
            f"<p>source {esc(str(data.attrs.get('source')))}, {data.attrs.get('length')} frames at "
            f"{data.attrs.get('fps')} fps, {data.samples} samples</p>")
    figure = vp.timeline(data, folder, "timeline.png")
    body = (head + _section("timeline", "Time axis", "all", _img(figure, "timeline")) + frames_section(data, folder)
            + keyframes_section(data, folder) + flow_section(data, folder) + motion_section(data, folder)
            + actions_section(data, folder) + text_section(data) + records_section(data, store))
    page = folder / "index.html"
    atomic_write_text(page, _page(f"{episode} - motiondata view", body))
    summary = {**data.summary(), "render_seconds": round(time.perf_counter() - start, 3)}
    return page, summary


def _index_body(store: StoreData, summaries: list[dict]) -> str:
    head = ("<tr><th>episode</th><th>source</th><th>frames</th><th>samples</th><th>VAE dB</th><th>VQGAN dB</th>"
            "<th>FAST err</th><th>flow valid</th><th>errors</th><th>instruction</th></tr>")
    rows = "".join(
        f"<tr data-source='{esc(str(s['source']))}' data-errors='{s['errors'] + s['problems']}' "
        f"data-flow='{'' if s['flow_valid'] is None else round(s['flow_valid'], 4)}'>"
        f"<td><a href='episodes/{esc(s['id'])}/index.html'>{esc(s['id'])}</a></td><td>{esc(str(s['source']))}</td>"
        f"<td>{s['length']}</td><td>{s['samples']}</td><td>{_fmt(s['vae_psnr'])}</td><td>{_fmt(s['keyframe_psnr'])}"
        f"</td><td>{_fmt(s['fast_error'], 4)}</td><td>{_fmt(s['flow_valid'], 3)}</td>"
        f"<td>{s['errors'] + s['problems']}</td><td>{esc(str(s['language'] or ''))}</td></tr>" for s in summaries)
    sources = sorted({str(s["source"]) for s in summaries})
    options = "".join(f"<option>{esc(s)}</option>" for s in sources)
    filters = ("<div class='filters'><label>source <select id='f-source'><option value=''>all</option>"
               f"{options}</select></label> <label><input type='checkbox' id='f-errors'> only with errors</label> "
               "<label>flow valid below <input type='number' id='f-flow' min='0' max='1' step='0.05' value='1'>"
               "</label> <label>search <input type='search' id='f-text'></label> <span id='f-count'></span></div>")
    rejected = [e for e in store.errors if e.get("episode") not in store.episodes]
    rej = "".join(f"<tr><td>{esc(str(e.get('episode')))}</td><td>{esc(str(e.get('file')))}</td>"
                  f"<td>{esc(str(e.get('stage')))}</td><td>{esc(str(e.get('reason')))}</td></tr>" for e in rejected)
    stages = [(s.get("name"), s.get("config_hash")) for s in store.manifest.get("stages", [])]
    return (f"<h1>motiondata store {esc(str(store.manifest.get('name')))}</h1><p>{len(summaries)} episodes shown "
            f"of {len(store.episodes)}, {store.manifest.get('num_samples')} samples, {len(store.errors)} "
            f"error records, complete: {store.manifest.get('complete', True)}</p>{filters}"
            f"<table id='episodes'>{head}{rows}</table><h2>Rejected inputs</h2>"
            + (f"<table><tr><th>episode</th><th>file</th><th>stage</th><th>reason</th></tr>{rej}</table>"
               if rej else "<p>none</p>") + "<h2>Stages</h2>" + _kv_table(stages))


def render_store(out: str | Path, dest: str | Path, episodes: list[str] | None = None,
                 max_latents: int | None = 8) -> ViewResult:
    """Write the index and one page per episode (all, or ``episodes``) into ``dest``."""
    start = time.perf_counter()
    store = load_store(out)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    result = ViewResult(dest / "index.html")
    summaries = []
    for episode in episodes or store.episodes:
        page, summary = render_episode(store, episode, dest, max_latents)
        result.pages[episode], result.seconds[episode] = page, summary["render_seconds"]
        summaries.append(summary)
        log.info("view: %s in %.2fs", episode, summary["render_seconds"])
    atomic_write_text(result.index, _page("motiondata view", _index_body(store, summaries), INDEX_JS))
    result.total_seconds = round(time.perf_counter() - start, 3)
    atomic_write_text(dest / "view.json", json.dumps({"episodes": summaries, "total_seconds": result.total_seconds},
                                                     indent=1, sort_keys=True, default=str))
    return result
