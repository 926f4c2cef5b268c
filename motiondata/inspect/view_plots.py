"""Figures of one episode for the HTML viewer: image mosaics (PIL), an animated strip (GIF) and matplotlib
plots (Agg backend, PNG). Every function writes one file and returns its name relative to the page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from motiondata.inspect import decode_checks as dc

DPI = 80
MAX_COLUMNS = 8


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, folder: Path, name: str) -> str:
    fig.savefig(folder / name, dpi=DPI, bbox_inches="tight")
    _plt().close(fig)
    return name


def pick(count: int, limit: int = MAX_COLUMNS) -> np.ndarray:
    """Up to ``limit`` evenly spaced indices into ``count`` items."""
    return np.unique(np.linspace(0, count - 1, min(count, limit)).round().astype(int)) if count else np.zeros(0, int)


def _upscale(image: np.ndarray, min_side: int = 96) -> np.ndarray:
    factor = max(1, int(np.ceil(min_side / max(1, min(image.shape[:2])))))
    return image.repeat(factor, axis=0).repeat(factor, axis=1)


def mosaic(rows: list[np.ndarray], folder: Path, name: str, gap: int = 2) -> str:
    """Rows of equal-height ``(N, H, W, 3)`` uint8 images as one PNG (white gaps), upscaled when tiny."""
    lines = []
    for row in rows:
        cells = [np.pad(_upscale(img), ((0, gap), (0, gap), (0, 0)), constant_values=255) for img in row]
        lines.append(np.concatenate(cells, axis=1))
    width = max(line.shape[1] for line in lines)
    lines = [np.pad(line, ((0, 0), (0, width - line.shape[1]), (0, 0)), constant_values=255) for line in lines]
    Image.fromarray(np.concatenate(lines, axis=0).astype(np.uint8)).save(folder / name, optimize=False)
    return name


def strip_gif(original: np.ndarray, recon: np.ndarray, folder: Path, name: str, fps: float) -> str:
    """Animated GIF: each frame is the original beside its reconstruction."""
    frames = [Image.fromarray(_upscale(np.concatenate([a, b], axis=1))) for a, b in zip(original, recon)]
    duration = int(1000 / max(1.0, min(float(fps or 10), 30.0)))
    frames[0].save(folder / name, save_all=True, append_images=frames[1:], duration=duration, loop=0)
    return name


def timeline(data: Any, folder: Path, name: str) -> str:
    """One time axis: VAE / keyframe PSNR per frame, flow valid share per query, FAST error per chunk."""
    plt = _plt()
    fig, axes = plt.subplots(3, 1, figsize=(9, 5.2), sharex=True)
    for c in data.vae:
        axes[0].plot(c.frames, c.psnr, label=f"{c.name} (VAE)")
    for c in data.keyframes:
        axes[0].plot(c.frames, c.psnr, "o", label=f"{c.name} (VQGAN)")
    axes[0].set_ylabel("PSNR dB")
    for c in data.flow:
        axes[1].plot(c.queries, c.valid.mean(axis=(1, 2)), "s-", label=c.name)
    axes[1].set_ylabel("flow valid")
    axes[1].set_ylim(0, 1.05)
    for c in data.fast:
        axes[2].bar(c.starts, c.error, width=max(1, len(c.raw[0]) // 2), label=c.name)
        axes[2].axhline(c.bound, color="red", lw=1, ls="--", label="rounding bound")
    axes[2].set_ylabel("FAST max err\n(normalised)")
    axes[2].set_xlabel("frame")
    axes[2].set_xlim(-1, max(1, int(data.attrs.get("length") or 1)))
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
        ax.grid(alpha=0.3)
    return _save(fig, folder, name)


def flow_figure(check: dc.FlowCheck, folder: Path, name: str, limit: int = 4) -> str:
    """The grid tracks drawn on their query frames, coloured by dd; invalid query points as red x."""
    plt = _plt()
    from matplotlib.collections import LineCollection
    from matplotlib.colors import TwoSlopeNorm

    picks = pick(len(check.queries), limit)
    fig, axes = plt.subplots(1, len(picks) + 1, figsize=(3.2 * (len(picks) + 1), 3.2), squeeze=False)
    span = float(np.abs(check.dd).max()) or 1e-6
    norm = TwoSlopeNorm(vmin=-span, vcenter=0.0, vmax=span)
    for ax, q in zip(axes[0], picks):
        ax.imshow(check.images[q])
        segments, colours = _segments(check, q)
        lines = LineCollection(segments, cmap="coolwarm", norm=norm, linewidths=1.2)
        lines.set_array(np.asarray(colours))
        ax.add_collection(lines)
        start = check.paths[q, :, 0]
        dead = ~check.valid[q, :, 0]
        ax.plot(start[dead, 0], start[dead, 1], "x", color="red", ms=3)
        ax.set_title(f"query {int(check.queries[q])}: {check.valid[q].mean():.0%} valid", fontsize=8)
        ax.axis("off")
    fig.colorbar(lines, ax=axes[0, :-1].tolist(), shrink=0.7, label="dd (<0 towards camera)")
    share = axes[0, -1]
    for q in picks:
        share.plot(check.step_share[q], label=f"q{int(check.queries[q])}")
    share.set(xlabel="step", ylabel="valid share", ylim=(0, 1.05), title="valid share per step")
    share.legend(fontsize=6)
    return _save(fig, folder, name)


def _segments(check: dc.FlowCheck, q: int) -> tuple[list[np.ndarray], list[float]]:
    segments, colours = [], []
    for point in range(check.paths.shape[1]):
        steps = int(check.valid[q, point].sum())
        if steps:
            segments.append(check.paths[q, point, : steps + 1])
            colours.append(float(check.dd[q, point]))
    return segments, colours


def motion_figure(name_: str, maps: dict[str, np.ndarray], folder: Path, name: str) -> str:
    """z_m heatmaps: (latent time x W) from pool_h and (latent time x H) from pool_w (channel RMS)."""
    plt = _plt()
    keys = [k for k in ("pool_h", "pool_w") if k in maps]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys):
        im = ax.imshow(maps[key].T, aspect="auto", origin="lower", cmap="magma",
                       extent=(-0.5, len(maps[key]) - 0.5, -0.5, maps[key].shape[1] - 0.5))
        ax.set(xlabel="latent time", ylabel="W" if key == "pool_h" else "H", title=f"{name_}.{key} (RMS over C)")
        fig.colorbar(im, ax=ax, shrink=0.8)
    return _save(fig, folder, name)


def actions_figure(check: dc.FastCheck, actions: np.ndarray, folder: Path, name: str) -> str:
    """Each action dimension over the episode, with the FAST round trip of every chunk dashed on top."""
    plt = _plt()
    dims = actions.shape[1]
    cols = min(4, dims)
    rows = int(np.ceil(dims / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 1.8 * rows), squeeze=False, sharex=True)
    horizon = check.raw.shape[1]
    for d in range(rows * cols):
        ax = axes[d // cols, d % cols]
        if d >= dims:
            ax.axis("off")
            continue
        ax.plot(actions[:, d], color="black", lw=1, label="raw")
        for start, dec, mask in zip(check.starts, check.decoded, check.mask):
            t = np.arange(start, start + horizon)[mask]
            ax.plot(t, dec[mask, d], "--", color="tab:orange", lw=1.2)
        ax.set_title(f"dim {d}", fontsize=8)
        ax.tick_params(labelsize=6)
    axes[0, 0].legend(["raw", "FAST round trip"], fontsize=6)
    return _save(fig, folder, name)


def tokens_figure(check: dc.FastCheck, folder: Path, name: str) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 2.2))
    ax.bar(check.starts, [len(t) for t in check.tokens], width=max(1, check.raw.shape[1] // 2))
    ax.set(xlabel="chunk start frame", ylabel="tokens", title="tokens per chunk")
    return _save(fig, folder, name)
