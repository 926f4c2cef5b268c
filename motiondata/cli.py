"""``motiondata`` command line: build, validate, inspect, fit-fast, train."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from rich.console import Console

console = Console(stderr=False)


def _setup_env() -> None:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def cmd_build(args: argparse.Namespace) -> int:
    from motiondata.pipeline.runner import run_job
    from motiondata.pipeline.spec import load_spec, with_input

    spec = load_spec(args.spec)
    if args.input:
        spec = with_input(spec, args.input)
    out = args.out or spec.output or f"out/{spec.name}"
    result = run_job(spec, out, ray_address=args.ray_address, executor=args.executor,
                     show_progress=not args.quiet)
    console.print(f"[bold]built[/bold] {result.shards_built} shards, skipped {result.shards_skipped} already done "
                  f"({result.shards_total} planned)")
    console.print(f"  episodes {result.num_episodes}, samples {result.num_samples}, rejected inputs {result.num_errors}")
    console.print(f"  shards      {result.out / 'shards'}")
    console.print(f"  zarr store  {result.out / 'episodes.zarr'}")
    console.print(f"  manifest    {result.out / 'manifest.json'}")
    console.print(f"  stats       {result.out / 'stats.json'}")
    console.print(f"  errors      {result.out / 'errors.jsonl'}")
    console.print(f"  report      {result.out / 'report.md'}")
    for failure in result.failed:
        console.print(f"[red]failed[/red] {failure} (rerun the same command to retry)")
    return 1 if result.failed else 0


def cmd_validate(args: argparse.Namespace) -> int:
    from motiondata.store.validate import validate_store

    problems = validate_store(args.dir, deep=not args.quick)
    for problem in problems:
        console.print(f"[red]problem[/red] {problem}", highlight=False)
    if problems:
        console.print(f"{len(problems)} problem(s) in {args.dir}")
        return 1
    console.print(f"[green]ok[/green] {args.dir}: manifests, checksums, counts, shards and schemas all valid")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from motiondata.inspect.report import render_report
    from motiondata.inspect.summary import summarize

    summary = summarize(args.dir, episode=args.episode)
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=2, default=str) + "\n")
        return 0
    sys.stdout.write(render_report(summary))
    if args.episode:
        detail = summary["episode"]
        console.print(f"episode {detail['id']} ({detail['windows']} windows, {detail['shard']})", markup=False)
        for name, desc in sorted(detail["arrays"].items()):
            console.print(f"  {name:28s} {desc['dtype']:10s} {tuple(desc['shape'])}", markup=False)
    return 0


def cmd_fit_fast(args: argparse.Namespace) -> int:
    from motiondata.tokenize.fit_report import fit_fast_cli, format_report

    report = fit_fast_cli(args.target, args.out, scale=args.scale, vocab_size=args.vocab_size, horizon=args.horizon)
    console.print(format_report(report), markup=False, highlight=False)
    console.print(f"saved tokenizer to {args.out}")
    return 0


def cmd_train(rest: list[str]) -> int:
    from motiondata.train.train import main as train_main

    return int(train_main(rest) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="motiondata", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build shards + zarr store from a YAML spec (resumable)")
    b.add_argument("spec")
    b.add_argument("--input", help="replace the path of the spec's single source")
    b.add_argument("--out", help="output directory (default: spec `output:` or out/NAME)")
    b.add_argument("--ray-address", help="connect to an existing Ray cluster (default: start a local one)")
    b.add_argument("--executor", choices=("ray", "local"), default="ray",
                   help="`local` builds shards in this process, without Ray")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=cmd_build)
    v = sub.add_parser("validate", help="check a store: schemas, checksums, counts, readable shards")
    v.add_argument("dir")
    v.add_argument("--quick", action="store_true", help="skip decoding every member")
    v.set_defaults(func=cmd_validate)
    i = sub.add_parser("inspect", help="episodes, windows, fields, stats and errors of a store")
    i.add_argument("dir")
    i.add_argument("--episode")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_inspect)
    f = sub.add_parser("fit-fast", help="fit a FAST action tokenizer on a store or a source")
    f.add_argument("target", help="a store directory, or an HDF5 file / folder")
    f.add_argument("--out", required=True)
    f.add_argument("--scale", type=float, default=10.0)
    f.add_argument("--vocab-size", type=int, default=1024)
    f.add_argument("--horizon", type=int, default=10)
    f.set_defaults(func=cmd_fit_fast)
    sub.add_parser("train", help="train the slim latent-motion model on a store (see `motiondata train -h`)",
                   add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    _setup_env()
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "-v" in argv or "--verbose" in argv
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if argv and argv[0] == "train":
        return cmd_train(argv[1:])
    args = build_parser().parse_args(argv)
    from motiondata.errors import MotionDataError

    try:
        return args.func(args)
    except MotionDataError as exc:
        console.print(f"[red]error[/red] {exc}", highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
