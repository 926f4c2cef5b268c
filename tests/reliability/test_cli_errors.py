"""Issue 9 item 6: every CLI error is one line on stderr naming the problem and the fix, with an honest exit
code (0 ok, 1 data problem, 2 usage, 130 interrupted); ``--json`` failures are JSON on stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

import motiondata.pipeline.runner as runner
from motiondata.cli import main
from motiondata.pipeline.runner import JobResult
from motiondata.pipeline.spec import load_spec, parse_spec
from motiondata.errors import SpecError
from tests.factories_pipeline import write_libero_hdf5, write_spec

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def hdf5(tmp_path: Path) -> Path:
    return write_libero_hdf5(tmp_path / "demo.hdf5", episodes=2, steps=10, size=32)


@pytest.fixture()
def spec(tmp_path: Path, hdf5: Path) -> Path:
    return write_spec(tmp_path / "spec.yaml", [{"kind": "hdf5", "path": str(hdf5), "name": "lib"}], size=[16, 16])


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("motiondata")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "motiondata.cli"]
    merged = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    return subprocess.run(command + list(args), capture_output=True, text=True, timeout=120, cwd=REPO, env=merged)


def fake_run_job(result_or_exc, seen: dict | None = None):
    def run_job(spec, out, ray_address=None, executor="ray", show_progress=True, *, retry_errors=False,
                verify=False, rebuild_changed=False):
        if seen is not None:
            seen.update(retry_errors=retry_errors, verify=verify, rebuild_changed=rebuild_changed, out=Path(out))
        if isinstance(result_or_exc, BaseException):
            raise result_or_exc
        return result_or_exc
    return run_job


# ----------------------------------------------------------------------------- specs

@pytest.mark.parametrize("text, expected", [
    ("name: x\nsources: [\n", "is not valid YAML at line"),
    ("sources:\n  - !!python/object/apply:os.system ['echo hi']\n", "python tags"),
    ("- just\n- a list\n", "a spec is a YAML mapping"),
    ("", "a spec is a YAML mapping"),
    ("sources: [{kind: hdf5, path: x.hdf5}]\nwindows: {lenght: 9}\n",
     "spec: windows.lenght: unknown key; valid keys: length, stride"),
    ("sources: [{kind: hdf5, path: x.hdf5}]\nwindows: {length: 9}\nwindows: {stride: 2}\n", "duplicate key 'windows'"),
    ("sources: [{kind: hdf5, path: x.hdf5}]\nsamples: {fields: {a: {from: actions}}, images: {format: gif}}\n",
     "spec: samples.images.format: 'gif' is not one of jpg, png, npy"),
    ("sources: [{kind: hdf5, path: x.hdf5}]\nframes: {size: [16, 16], mode: fit}\n", "frames.mode"),
    ("sources: [{kind: hdf5, path: x.hdf5, optoins: {}}]\n", "spec: sources[0].optoins: unknown key"),
    ("a: &a [1,1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
     "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nsources: [*e]\n", "aliases"),
])
def test_bad_spec_is_one_line_exit_2(tmp_path, capsys, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["build", str(path), "--out", str(tmp_path / "out"), "--executor", "local"]) == 2
    assert expected in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_schema_accepts_every_shipped_pipeline_and_the_samples_block():
    schema = json.loads((REPO / "schemas" / "spec.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$id"] == "urn:motiondata:schema:spec:1.0" and schema["format_version"] == "1.0"
    for path in sorted((REPO / "pipelines").glob("*.yaml")):
        load_spec(path)
    data = {"sources": [{"kind": "hdf5", "path": "x.hdf5"}],
            "samples": {"stride": 2, "start": 0, "unit": "frames", "images": {"format": "jpg", "quality": 90},
                        "depth": {"format": "png16"}, "drop_padded": ["actions"],
                        "fields": {"actions": {"from": "actions", "offsets": {"start": 0, "stop": 10, "step": 1}},
                                   "rgb.top": {"from": "rgb.top", "offsets": [-6, 0, 6]}}}}
    spec = parse_spec(data)
    assert spec.samples == data["samples"] and spec.hash() != parse_spec({"sources": data["sources"]}).hash()
    with pytest.raises(SpecError, match=r"samples.fields.actions.offsets"):
        parse_spec({**data, "samples": {"fields": {"actions": {"from": "actions", "offsets": {"start": 0}}}}})


def test_frame_mode_is_applied_not_ignored(tmp_path, hdf5):
    """frames.mode reaches the build: pad letterboxes a square source into a wide frame, crop fills it, and
    an unknown mode is a one-line usage error."""
    from motiondata.store.shards import iter_shard

    firsts = {}
    for mode in ("pad", "crop"):
        path = tmp_path / f"{mode}.yaml"
        path.write_text(f"sources: [{{kind: hdf5, path: {hdf5}}}]\nframes: {{size: [16, 32], mode: {mode}}}\n"
                        "windows: {length: 4, stride: 4}\n")
        assert main(["build", str(path), "--out", str(tmp_path / mode), "--executor", "local", "-q"]) == 0
        sample = next(iter(iter_shard(tmp_path / mode / "shards" / "shard-000000.tar")))
        firsts[mode] = next(v for k, v in sample.items() if k.startswith("rgb."))
    pad, crop = firsts["pad"], firsts["crop"]
    assert pad.shape[1:3] == crop.shape[1:3] == (16, 32)
    assert not pad[:, :, :8].any() and not pad[:, :, -8:].any() and pad[:, :, 8:24].any()  # black borders
    assert crop[:, :, :8].any() and crop[:, :, -8:].any()
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"sources: [{{kind: hdf5, path: {hdf5}}}]\nframes: {{size: [16, 32], mode: zoom}}\n")
    assert main(["build", str(bad), "--out", str(tmp_path / "bad"), "--executor", "local"]) == 2


def test_missing_spec_input_and_source_paths_exit_2(tmp_path, capsys, spec):
    assert main(["build", str(tmp_path / "nope.yaml")]) == 2
    assert "not found" in one_error_line(capsys)
    assert main(["build", str(spec), "--input", str(tmp_path / "missing.hdf5"), "--out", str(tmp_path / "o")]) == 2
    assert "--input" in one_error_line(capsys)
    gone = write_spec(tmp_path / "gone.yaml", [{"kind": "hdf5", "path": str(tmp_path / "gone.hdf5")}])
    assert main(["build", str(gone), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist; fix its `path:`" in one_error_line(capsys)


# ----------------------------------------------------------------------------- stages (preflight)

@pytest.mark.parametrize("stages, expected", [
    ([{"name": "motion"}, {"name": "vae", "model": "tokenizers/vae/demo-wan"}], "list a vae stage before it"),
    ([{"name": "vae", "model": "tokenizers/vae/nope"}], "stage vae: cannot load model tokenizers/vae/nope"),
    ([{"name": "fast", "tokenizer": "tokenizers/fast/nope"}], "stage fast: cannot load tokenizer"),
    ([{"name": "fast", "tokenizr": "tokenizers/fast/demo"}], "valid parameters:"),
    ([{"name": "nosuchstage"}], "unknown stage"),
])
def test_stage_problems_fail_before_any_work(tmp_path, capsys, hdf5, stages, expected, monkeypatch):
    monkeypatch.setattr(runner, "run_job", fake_run_job(AssertionError("run_job must not be reached")))
    path = write_spec(tmp_path / "s.yaml", [{"kind": "hdf5", "path": str(hdf5), "name": "lib"}], stages=stages)
    assert main(["build", str(path), "--out", str(tmp_path / "out"), "--executor", "local"]) == 2
    line = one_error_line(capsys)
    assert expected in line and ("fix" in line or "list" in line or "valid" in line or "available" in line)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- build outcomes

def test_build_json_success_then_validate_json(tmp_path, capsys, spec):
    out = tmp_path / "out"
    code = main(["build", str(spec), "--out", str(out), "--executor", "local", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == summary["exit_code"] and summary["ok"] == (code == 0)
    assert summary["num_episodes"] + summary["num_errors"] >= 2
    assert not (out / ".motiondata.lock").exists()
    code = main(["validate", str(out), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["exit_code"] == code and report["ok"] == (code == 0) and isinstance(report["problems"], list)


def test_nothing_stored_is_exit_1_with_the_problem_on_stderr(tmp_path, capsys, spec, monkeypatch):
    result = JobResult(tmp_path / "out", shards_total=1, shards_built=1, num_errors=2)
    monkeypatch.setattr(runner, "run_job", fake_run_job(result))
    assert main(["build", str(spec), "--out", str(tmp_path / "out"), "-q"]) == 1
    assert "nothing was stored" in one_error_line(capsys)


@pytest.mark.parametrize("fields, expected", [
    ({"problem": "stage vae failed on every episode: bad weights; fix the stage's model: path"}, "every episode"),
    ({"failed": ["shard-000001: OSError: disk full"]}, "1 shard(s) failed"),
    ({"complete": False}, "incomplete"),
])
def test_data_problems_exit_1(tmp_path, capsys, spec, monkeypatch, fields, expected):
    result = JobResult(tmp_path / "out", shards_total=2, shards_built=2, num_episodes=2, num_samples=4)
    result.complete = True
    for key, value in fields.items():
        setattr(result, key, value)
    monkeypatch.setattr(runner, "run_job", fake_run_job(result))
    assert main(["build", str(spec), "--out", str(tmp_path / "out"), "-q", "--json"]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] is False and summary["exit_code"] == 1 and expected in summary["error"]
    assert main(["build", str(spec), "--out", str(tmp_path / "out"), "-q"]) == 1
    assert expected in one_error_line(capsys)


def test_flags_pass_through_only_when_the_runner_takes_them(tmp_path, capsys, spec, monkeypatch):
    seen: dict = {}
    result = JobResult(tmp_path / "out", shards_total=1, num_episodes=1, num_samples=1)
    result.complete = True
    monkeypatch.setattr(runner, "run_job", fake_run_job(result, seen))
    assert main(["build", str(spec), "--out", str(tmp_path / "out"), "-q", "--retry-errors", "--verify"]) == 0
    assert seen["retry_errors"] and seen["verify"] and not seen["rebuild_changed"]
    def old_run_job(spec, out, ray_address=None, executor="ray", show_progress=True):
        return result

    monkeypatch.setattr(runner, "run_job", old_run_job)
    assert main(["build", str(spec), "--out", str(tmp_path / "out"), "-q", "--rebuild-changed"]) == 2
    assert "--rebuild-changed is not supported" in one_error_line(capsys)


def test_ctrl_c_is_exit_130_and_releases_the_lock(tmp_path, capsys, spec, monkeypatch):
    monkeypatch.setattr(runner, "run_job", fake_run_job(KeyboardInterrupt()))
    assert main(["build", str(spec), "--out", str(tmp_path / "out")]) == 130
    assert one_error_line(capsys) == "interrupted; rerun the same command to resume"
    assert not (tmp_path / "out" / ".motiondata.lock").exists()


def test_unexpected_exception_is_one_line_and_v_shows_the_traceback(tmp_path, capsys, spec, monkeypatch):
    monkeypatch.setattr(runner, "run_job", fake_run_job(RuntimeError("boom\nsecond line")))
    assert main(["build", str(spec), "--out", str(tmp_path / "out")]) == 1
    line = one_error_line(capsys)
    assert line == ("error: internal error: RuntimeError: boom second line; rerun with -v for the traceback "
                    "and report it")
    assert main(["-v", "build", str(spec), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: internal error")


def test_json_failures_are_json_on_stdout(tmp_path, capsys, spec):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources: [{kind: hdf5, path: x}]\nwindows: {lenght: 9}\n")
    assert main(["build", str(bad), "--json"]) == 2
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc == {"ok": False, "exit_code": 2,
                   "error": "spec: windows.lenght: unknown key; valid keys: length, stride"}
    assert main(["validate", str(tmp_path / "nope"), "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["exit_code"] == 2


# ----------------------------------------------------------------------------- train arguments

@pytest.mark.parametrize("args, expected", [
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--store", "s", "--batch-size", "many"], "invalid int value"),
    ([], "--store DIR is required"),
    (["--store", "{tmp}/no_store"], "does not exist"),
    (["--store", "{tmp}", "--lr", "-1"], "--lr -1.0: must be > 0"),
    (["--store", "{tmp}", "--heads", "zm,nope"], "unknown head(s)"),
    (["--store", "{tmp}", "--on-corrupt", "ignore"], "invalid choice"),
    (["--store", "{tmp}", "--d-model", "10", "--n-heads", "4"], "not a multiple"),
    (["--store", "{tmp}", "--resume", "{tmp}/nope.pt"], "no such checkpoint"),
])
def test_train_argument_errors_are_one_line_exit_2(tmp_path, capsys, args, expected):
    argv = ["train"] + [a.format(tmp=tmp_path) for a in args]
    assert main(argv) == 2
    assert expected in one_error_line(capsys)


def test_help_documents_the_exit_codes(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "exit codes:" in out and "130" in out and "usage" in out


# ----------------------------------------------------------------------------- real processes

@pytest.mark.slow
def test_subprocess_errors_are_one_line_without_traceback(tmp_path, spec):
    bad = tmp_path / "tag.yaml"
    bad.write_text("sources: !!python/object/apply:os.system ['touch pwned']\n")
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = [(["build", str(bad)], 2, "python tags"),
             (["build", str(spec), "--out", str(afile)], 2, "is a file"),
             (["train", "--nope"], 2, "unrecognized arguments")]
    for args, code, expected in cases:
        proc = cli(*args)
        assert proc.returncode == code, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert not (REPO / "pwned").exists()


@pytest.mark.ray
@pytest.mark.slow
def test_ray_address_auto_without_a_cluster(tmp_path, spec):
    # RAY_TMPDIR points "auto" at an empty folder, so a cluster another test started is not found
    proc = cli("build", str(spec), "--out", str(tmp_path / "out"), "--ray-address", "auto", "-q",
               env={"RAY_TMPDIR": str(tmp_path / "ray"), "RAY_ADDRESS": None})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: no Ray cluster at auto; start one with `ray start --head` or drop --ray-address"], proc.stderr
    assert not (tmp_path / "out" / ".motiondata.lock").exists()
