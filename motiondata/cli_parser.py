"""The ``motiondata`` command line's argument parser (the commands themselves are in ``motiondata.cli``)."""

from __future__ import annotations

import argparse
from typing import Any, Callable

from motiondata.usage import OneLineArgumentParser

Handlers = dict[str, Callable[[argparse.Namespace], int]]
EXIT_CODES = """exit codes:
  0    ok
  1    data problem: the store is incomplete, shards failed, nothing could be stored, validate found problems
  2    usage: bad arguments, a bad spec, a missing input, an --out that is not a store folder or is locked
  130  interrupted (Ctrl-C): rerun the same command to resume
"""


def _add_build(sub: Any, common: argparse.ArgumentParser, handlers: Handlers) -> None:
    b = sub.add_parser("build", parents=[common], epilog=EXIT_CODES,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="build shards + zarr store from a YAML spec (resumable)")
    b.add_argument("spec")
    b.add_argument("--input", help="replace the path of the spec's single source")
    b.add_argument("--out", help="output directory, or s3://bucket/prefix (default: spec `output:` or out/NAME)")
    b.add_argument("--ray-address", help="connect to an existing Ray cluster (default: start a local one)")
    b.add_argument("--executor", choices=("ray", "ray-stages", "local"), default="ray",
                   help="`local` builds shards in this process, without Ray")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    b.add_argument("--json", action="store_true", help="print the result (or the error) as one JSON object")
    b.add_argument("--retry-errors", action="store_true", help="rebuild the shards that hold error records")
    b.add_argument("--verify", action="store_true", help="rebuild finished shards whose sha256 no longer matches")
    b.add_argument("--rebuild-changed", action="store_true",
                   help="rebuild the shards whose inputs changed instead of refusing")
    b.set_defaults(func=handlers['build'])


def _add_decode_flags(v: Any) -> None:
    v.add_argument("--decode", type=int, metavar="N", help="decode N sampled windows per stage with the store's "
                   "own models (VAE/keyframe PSNR, FAST round trip, flow valid share); figures go to report.md")
    v.add_argument("--min-vae-psnr", type=float, help="--decode: VAE reconstruction threshold in dB (default 20)")
    v.add_argument("--min-keyframe-psnr", type=float, help="--decode: VQGAN keyframe threshold in dB (default 18)")
    v.add_argument("--min-flow-valid", type=float, help="--decode: least valid share of flow point-steps (0.2)")
    v.add_argument("--max-latents", type=int, default=8, help="--decode: causal VAE latent frames decoded per "
                   "episode (VAE windows are sampled among them)")


def _add_view(sub: Any, common: argparse.ArgumentParser, handlers: Handlers) -> None:
    w = sub.add_parser("view", parents=[common], help="offline HTML report (or a rerun .rrd) of a store's "
                       "episodes with every token decoded back beside the raw data")
    w.add_argument("store")
    w.add_argument("--episode", action="append", help="only this episode (repeatable; default: all)")
    w.add_argument("--out", help="folder for the HTML report (default: STORE/view)")
    w.add_argument("--rerun", metavar="FILE.rrd", help="write a rerun recording instead of HTML")
    w.add_argument("--max-latents", type=int, default=8, help="causal VAE latent frames decoded per episode "
                   "(0: all; decoding is the slow part on CPU)")
    w.set_defaults(func=handlers['view'])


def build_parser(handlers: Handlers, description: str | None = None) -> argparse.ArgumentParser:
    """The ``motiondata`` argument parser; ``handlers`` maps each subcommand to the function it runs."""
    common = OneLineArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    parser = OneLineArgumentParser(prog="motiondata", description=description, epilog=EXIT_CODES,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_build(sub, common, handlers)
    v = sub.add_parser("validate", parents=[common], epilog=EXIT_CODES,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="check a store: schemas, checksums, counts, readable shards")
    v.add_argument("dir")
    v.add_argument("--quick", action="store_true", help="skip decoding every member")
    v.add_argument("--json", action="store_true", help="print the report as one JSON object")
    _add_decode_flags(v)
    v.set_defaults(func=handlers['validate'])
    _add_view(sub, common, handlers)
    i = sub.add_parser("inspect", parents=[common], help="episodes, windows, fields, stats and errors of a store")
    i.add_argument("dir")
    i.add_argument("--episode")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=handlers['inspect'])
    f = sub.add_parser("fit-fast", parents=[common], help="fit a FAST action tokenizer on a store or a source")
    f.add_argument("target", help="a store directory, or an HDF5 file / folder")
    f.add_argument("--out", required=True)
    f.add_argument("--scale", type=float, default=10.0)
    f.add_argument("--vocab-size", type=int, default=1024)
    f.add_argument("--horizon", type=int, default=10)
    f.set_defaults(func=handlers['fit-fast'])
    r = sub.add_parser("reshard", parents=[common], help="re-cut a recipe store with another sample recipe "
                       "(no re-encoding)")
    r.add_argument("store", help="a store built from a spec with `samples:`")
    r.add_argument("--recipe", required=True, help="a spec YAML (its `samples:` block) or a bare samples YAML")
    r.add_argument("--out", required=True, help="a new, empty folder")
    r.set_defaults(func=handlers['reshard'])
    e = sub.add_parser("export", parents=[common], help="write a store in another ecosystem's format")
    e_sub = e.add_subparsers(dest="format", required=True)
    lr = e_sub.add_parser("lerobot", parents=[common], help="a LeRobot v3.0 dataset (docs/export.md)")
    lr.add_argument("store", help="a store built by `motiondata build`")
    lr.add_argument("out_dir", help="a new or empty folder")
    lr.add_argument("--repo-id", help="the dataset's repo id (default local/<OUT_DIR name>)")
    lr.add_argument("--source", action="append", help="export only this source's episodes (repeatable)")
    lr.add_argument("--codec", default="libx264", help="video encoder (PyAV/FFmpeg name, default libx264)")
    lr.add_argument("--crf", type=int, default=10, help="video quality: lower is better (default 10)")
    lr.add_argument("--json", action="store_true", help="print the summary (or the error) as one JSON object")
    lr.set_defaults(func=handlers['export'])
    sub.add_parser("train", help="train the slim latent-motion model on a store (see `motiondata train -h`)",
                   add_help=False)
    return parser
