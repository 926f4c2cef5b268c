"""``motiondata`` command line: build, validate, inspect, fit-fast, train.

Every error is one line on stderr naming the problem and the fix (``-v`` adds the traceback); with
``--json`` (build, validate) the result, success or failure, is one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from rich.console import Console

from motiondata.cli_parser import build_parser
from motiondata.errors import EpisodeValidationError, MotionDataError, SourceError, StoreError
from motiondata.usage import (EXIT_DATA, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, UsageError,
                              one_line)

console = Console(stderr=False, soft_wrap=True)
log = logging.getLogger("motiondata.cli")
VERBOSE_FLAGS = ("-v", "--verbose")
# build flags passed to run_job as keyword arguments when the runner accepts them
RUN_FLAGS = (("retry_errors", "--retry-errors"), ("verify", "--verify"), ("rebuild_changed", "--rebuild-changed"))


def _setup_env() -> None:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _emit_json(document: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(document, sort_keys=True, default=str) + "\n")


def fail(message: object, code: int, as_json: bool = False) -> int:
    """Report a failure as one line on stderr (or a JSON object on stdout) and return its exit code."""
    text = one_line(message)
    if as_json:
        _emit_json({"ok": False, "error": text, "exit_code": code})
    else:
        sys.stderr.write(f"error: {text}\n")
    return code


def exit_code_of(exc: BaseException) -> int:
    """1 for data problems (a store, an input), 2 for everything the user fixes in the command or spec."""
    code = getattr(exc, "exit_code", None)
    if isinstance(code, int):
        return code
    return EXIT_DATA if isinstance(exc, (StoreError, SourceError, EpisodeValidationError)) else EXIT_USAGE


def _input_spec(args: argparse.Namespace):
    from motiondata.pipeline.preflight import is_remote
    from motiondata.pipeline.spec import load_spec, with_input

    spec = load_spec(args.spec)
    if args.input:
        if not is_remote(args.input) and not Path(args.input).exists():
            raise UsageError(f"--input {args.input} does not exist; pass an existing file or folder")
        spec = with_input(spec, args.input)
    return spec


def _run_options(args: argparse.Namespace, run_job: Any) -> dict[str, Any]:
    accepted = inspect.signature(run_job).parameters
    options = {}
    for name, flag in RUN_FLAGS:
        if getattr(args, name, False):
            if name not in accepted:
                raise UsageError(f"{flag} is not supported by this version's runner; drop it")
            options[name] = True
    return options


def cmd_build(args: argparse.Namespace) -> int:
    from motiondata.pipeline import preflight
    from motiondata.pipeline.runner import run_job
    from motiondata.store.lock import OutLock

    spec = _input_spec(args)
    preflight.check_sources(spec)
    preflight.check_frames(spec)
    preflight.check_stages(spec)
    out, lock_dir = _build_out(args.out or spec.output or f"out/{spec.name}", spec)
    options = _run_options(args, run_job)
    # with --json, stdout carries the one JSON object only: anything else printed meanwhile goes to stderr
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        preflight.load_stage_models(spec, device="cpu" if args.executor in ("ray", "ray-stages") else None)
        with OutLock(lock_dir):
            try:
                result = run_job(spec, out, ray_address=args.ray_address, executor=args.executor,
                                 show_progress=not (args.quiet or args.json), **options)
            except ConnectionError as exc:
                if not args.ray_address:
                    raise
                raise UsageError(f"no Ray cluster at {args.ray_address}; start one with `ray start --head` or "
                                 "drop --ray-address") from exc
    return _report_build(result, args)


def _build_out(out: str, spec: Any) -> tuple[str | Path, Path]:
    """``(--out, the folder to lock)``: a remote ``s3://`` store is checked (package, bucket, credentials)
    and its local staging folder locked, which guards one machine only (docs/scale.md: one driver per prefix)."""
    from motiondata.pipeline import preflight, remote_out
    from motiondata.store import objstore

    if objstore.is_remote(out):
        remote_out.check_out(out)
        return out, remote_out.resolve(out)[0]
    preflight.check_out(Path(out), spec)
    return Path(out), Path(out)


def _in_store(out: str | Path, name: str) -> str | Path:
    """A path inside a store: a folder, or a remote store's URL."""
    from motiondata.store import objstore

    return objstore.join(str(out), name) if objstore.is_remote(out) else Path(out) / name


def build_summary(result: Any) -> dict[str, Any]:
    """The outcome of a build as plain JSON, with the exit code it deserves."""
    problem = getattr(result, "problem", None)
    complete = bool(getattr(result, "complete", True))
    if not problem and not result.num_episodes:
        errors = _in_store(result.out, "errors.jsonl")
        problem = (f"nothing was stored ({result.num_errors} input(s) rejected); see {errors} "
                   "for why, fix the inputs or the spec and rerun")
    error = problem or (f"{len(result.failed)} shard(s) failed, first {result.failed[0]}; rerun the same "
                        "command to retry" if result.failed else None)
    if not error and not complete:
        error = "the store is incomplete; rerun the same command to finish it"
    code = EXIT_DATA if error else EXIT_OK
    summary = {"ok": code == EXIT_OK, "exit_code": code, "out": str(result.out), "complete": complete,
               "shards_total": result.shards_total, "shards_built": result.shards_built,
               "shards_skipped": result.shards_skipped, "failed": list(result.failed),
               "num_episodes": result.num_episodes, "num_samples": result.num_samples,
               "num_errors": result.num_errors, "problem": problem, "advice": getattr(result, "advice", None)}
    if error:
        summary["error"] = one_line(error)
    return summary


def _report_build(result: Any, args: argparse.Namespace) -> int:
    summary = build_summary(result)
    if args.json:
        _emit_json(summary)
        return summary["exit_code"]
    console.print(f"[bold]built[/bold] {result.shards_built} shards, skipped {result.shards_skipped} already done "
                  f"({result.shards_total} planned)")
    console.print(f"  episodes {result.num_episodes}, samples {result.num_samples}, "
                  f"rejected inputs {result.num_errors}")
    for label, name in (("shards", "shards"), ("zarr store", "episodes.zarr"), ("manifest", "manifest.json"),
                        ("stats", "stats.json"), ("errors", "errors.jsonl"), ("report", "report.md")):
        console.print(f"  {label:11s} {_in_store(result.out, name)}", markup=False, highlight=False)
    for failure in result.failed:
        console.print(f"[red]failed[/red] {failure}", highlight=False)
    if result.num_errors and not summary.get("error"):
        advice = summary["advice"] or (f"{result.num_errors} rejected input(s) listed in errors.jsonl; "
                                       "fix them and rerun")
        console.print(advice, markup=False, highlight=False)
    if summary.get("error"):
        fail(summary["error"], summary["exit_code"])
    return summary["exit_code"]


def _validate_report(directory: str, deep: bool) -> dict[str, Any]:
    from motiondata.store import validate

    if hasattr(validate, "validate_store_report"):
        return validate.validate_store_report(directory, deep=deep)
    problems = validate.validate_store(directory, deep=deep)
    return {"ok": not problems, "deep": deep, "problems": problems, "skipped": []}


def _store_arg(directory: str) -> None:
    """A store argument is a local --out folder or an object store URL (``s3://bucket/prefix``)."""
    from motiondata.store.objstore import is_remote, local_path

    if is_remote(directory):
        from motiondata.pipeline.remote_out import check_store_url

        check_store_url(directory)
    elif not local_path(directory).is_dir():
        raise UsageError(f"{directory} is not a folder; pass the --out folder of a `motiondata build` (or its "
                         "s3://bucket/prefix)")


def cmd_validate(args: argparse.Namespace) -> int:
    from motiondata.store.validate_remote import readable_store

    _store_arg(args.dir)
    if getattr(args, "decode", None) is None:
        report = _validate_report(args.dir, deep=not args.quick)  # s3://...: motiondata.store.validate_remote
    else:
        with readable_store(args.dir, copy="all") as (local, mapped):  # remote: decoding needs a whole copy
            report = mapped(_with_decode_checks(_validate_report(local, deep=not args.quick), args, local))
    problems = [str(p) for p in report["problems"]]
    code = EXIT_DATA if problems else EXIT_OK
    if args.json:
        extra = {"error": f"{len(problems)} problem(s) in {args.dir}"} if problems else {}
        _emit_json({**report, "problems": problems, "dir": str(args.dir), "exit_code": code, "ok": not problems,
                    **extra})
        return code
    for problem in problems:
        sys.stdout.write(f"problem {one_line(problem)}\n")
    for skipped in report.get("skipped") or []:
        sys.stdout.write(f"skipped {skipped}\n")
    if problems:
        return fail(f"{len(problems)} problem(s) in {args.dir}; see the lines above, rebuild the named shards "
                    "(`motiondata build ... --verify`) or delete the store and build it again", code)
    console.print(f"[green]ok[/green] {args.dir}: manifests, checksums, counts, shards and schemas all valid",
                  highlight=False)
    return code


def _with_decode_checks(report: dict[str, Any], args: argparse.Namespace, directory: str) -> dict[str, Any]:
    """``validate --decode N``: decode spot checks (motiondata.store.validate_decode) added to the report."""
    from motiondata.store.validate_decode import validate_decode

    if args.decode < 1:
        raise UsageError(f"--decode {args.decode}: pass how many windows to decode per stage, e.g. --decode 4")
    overrides = {"vae_psnr": args.min_vae_psnr, "keyframe_psnr": args.min_keyframe_psnr,
                 "flow_valid": args.min_flow_valid}
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        decoded = validate_decode(directory, args.decode, overrides, max_latents=args.max_latents)
    return {**report, "problems": list(report["problems"]) + decoded.problems,
            "decode": {"checks": decoded.checks, "thresholds": decoded.thresholds}}


def cmd_inspect(args: argparse.Namespace) -> int:
    from motiondata.store.validate_remote import readable_store

    _store_arg(args.dir)
    episodes = [args.episode] if args.episode else []
    with readable_store(args.dir, episodes=episodes) as (local, mapped):  # remote: a copy of the metadata
        return _inspect(args, local, mapped)


def _inspect(args: argparse.Namespace, directory: str, mapped: Any) -> int:
    from motiondata.inspect.report import render_report
    from motiondata.inspect.summary import episode_summary, summarize

    if args.episode:
        from motiondata.inspect.episode_text import print_episode

        detail = mapped(episode_summary(directory, args.episode))
        if args.json:
            sys.stdout.write(json.dumps({"episode": detail}, indent=2, default=str) + "\n")
        else:
            print_episode(detail, console)
        return 0
    summary = mapped(summarize(directory))
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=2, default=str) + "\n")
        return 0
    sys.stdout.write(render_report(summary))
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    if not Path(args.store).is_dir():
        raise UsageError(f"{args.store} is not a folder; pass the --out folder of a `motiondata build`")
    max_latents = None if args.max_latents == 0 else args.max_latents
    if args.rerun:
        from motiondata.inspect.view_rerun import write_rrd

        path = write_rrd(args.store, args.rerun, episodes=args.episode, max_latents=max_latents)
        console.print(f"wrote {path}; open it with `rerun {path}`", markup=False, highlight=False)
        return 0
    from motiondata.inspect.view_html import render_store

    out = Path(args.out or Path(args.store) / "view")
    result = render_store(args.store, out, episodes=args.episode, max_latents=max_latents)
    console.print(f"wrote {result.index} ({len(result.pages)} episodes in {result.total_seconds:.1f}s)",
                  markup=False, highlight=False)
    return 0


def cmd_fit_fast(args: argparse.Namespace) -> int:
    from motiondata.tokenize.fit_report import fit_fast_cli, format_report

    if "://" not in args.target and not Path(args.target).exists():
        raise UsageError(f"{args.target} does not exist; pass a store folder, an HDF5 file or a folder of them")
    report = fit_fast_cli(args.target, args.out, scale=args.scale, vocab_size=args.vocab_size, horizon=args.horizon)
    console.print(format_report(report), markup=False, highlight=False)
    console.print(f"saved tokenizer to {args.out}")
    return 0


def cmd_reshard(args: argparse.Namespace) -> int:
    from motiondata.pipeline.reshard import reshard

    if not Path(args.store).is_dir():
        raise UsageError(f"{args.store} is not a folder; pass the --out folder of a `motiondata build`")
    job = reshard(args.store, args.recipe, args.out)
    console.print(f"resharded {args.store} -> {args.out}: {job['num_samples']} samples in {len(job['shards'])} "
                  "shards (episode tables shared, nothing re-encoded)", markup=False)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from motiondata.export.lerobot import export_lerobot

    summary = export_lerobot(args.store, args.out_dir, repo_id=args.repo_id, sources=args.source or None,
                             codec=args.codec, crf=args.crf)
    if args.json:
        sys.stdout.write(json.dumps({"ok": True, **summary}) + "\n")
    else:
        console.print(f"exported {summary['episodes']} episodes ({summary['frames']} frames, {summary['fps']} fps) "
                      f"to {summary['out']} as LeRobot v3.0", markup=False)
    return 0


def cmd_train(rest: list[str]) -> int:
    from motiondata.train.train import main as train_main

    return int(train_main(rest) or 0)


def _dispatch(argv: list[str]) -> int:
    rest = list(argv)
    while rest and rest[0] in VERBOSE_FLAGS:
        rest.pop(0)
    if rest and rest[0] == "train":
        return cmd_train([a for a in rest[1:] if a not in VERBOSE_FLAGS])
    handlers = {"build": cmd_build, "validate": cmd_validate, "view": cmd_view, "inspect": cmd_inspect,
                "fit-fast": cmd_fit_fast, "reshard": cmd_reshard, "export": cmd_export}
    args = build_parser(handlers, __doc__).parse_args(argv)
    return args.func(args)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)  # library warnings go through logging: hidden unless -v
    logging.getLogger("py.warnings").setLevel(logging.WARNING if verbose else logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    _setup_env()
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = any(a in VERBOSE_FLAGS for a in argv)
    as_json = "--json" in argv
    _setup_logging(verbose)
    try:
        return _dispatch(argv)
    except KeyboardInterrupt:
        message = "interrupted; rerun the same command to resume"
        if as_json:
            return fail(message, EXIT_INTERRUPTED, True)
        sys.stderr.write(message + "\n")
        return EXIT_INTERRUPTED
    except SystemExit as exc:  # -h, and `train`'s own one-line argument errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_USAGE)
    except MotionDataError as exc:
        if verbose:
            traceback.print_exc()
        return fail(exc, exit_code_of(exc), as_json)
    except Exception as exc:
        if verbose:
            traceback.print_exc()
        return fail(f"internal error: {type(exc).__name__}: {one_line(exc)}; rerun with -v for the traceback and "
                    "report it", EXIT_DATA, as_json)


if __name__ == "__main__":
    sys.exit(main())
