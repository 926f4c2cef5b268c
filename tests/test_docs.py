"""The documented commands run (issue 9 item 12): every fenced block in README.md and docs/**/*.md is checked.

How a page marks its blocks (the first word of the info string is the language, as GitHub renders it):

- ```bash / ```python: run by default (```sh, ```shell, ```py too; ```LANG run marks any other one).
- ```bash norun / ```python norun: not run (a cluster, a GPU, the network, external data, minutes of work);
  the last non-blank line above the fence is ``<!-- norun: the one-line reason -->``. Even so, a norun
  `motiondata SUB --flag` must use flags that `motiondata SUB -h` lists, and a norun python block must
  compile and its imports must resolve.
- ```bash exit=N: run, and exit N is expected (a command documented to fail, e.g. validate on a bad store).
- ```python signature=package.module: an API signature, not run; every `name(params)` in it must match
  ``inspect.signature`` of ``package.module.name`` (parameter names, in order).
- ```yaml: must parse with ``yaml.safe_load``; a spec or a spec fragment (top-level spec keys, or a bare
  stage list) must pass schemas/spec.schema.json and each of its stages must build (no model is loaded).
- Other blocks (trees, log lines, ```json, ```text) are prose. A block that starts a Ray cluster, installs
  or downloads is never run: mark it norun.

Runnable blocks run page by page, in order, in a fresh folder per page: ``pipelines``, ``data``, ``schemas``
and ``.venv`` link to the repository's, ``tokenizers`` is a copy (commands that write there stay in the
folder), and every ``out/NAME`` the page reads (NAME a spec in pipelines/, e.g. out/demo, out/train_demo) is a
copy of a reduced store of pipelines/NAME.yaml (4 bundled aloha episodes x 48 frames, 32x32, no video source),
built once per session, unless the page builds ``--out out/NAME`` itself. bash blocks run with
``bash -e -o pipefail``, python blocks with ``.venv/bin/python -c`` (self-contained: their own imports).
Docs hold no machine-specific absolute paths. ``python -m tests.test_docs`` lists every page's blocks.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

from tests.factories_recipes import REPO, small_aloha

pytestmark = pytest.mark.slow

PAGES = sorted([REPO / "README.md", *(REPO / "docs").rglob("*.md")])
RUN_LANGS = {"bash", "sh", "shell", "python", "py"}
PY_LANGS = {"python", "py"}
KNOWN_ATTRS = {"run", "norun", "signature", "exit"}
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})(.*)$")
NORUN_REASON = re.compile(r"^<!--\s*norun:\s*(\S.*?)\s*-->$")
MACHINE_PATHS = re.compile(r"(?<![\w.~-])/(?:work|root|home|tmp)/")
UNSAFE = re.compile(r"\bray (?:start|stop)\b|--ray-address|\b(?:pip|apt-get|apt) install\b|huggingface-cli|"
                    r"\bcurl\b|\bwget\b")
BLOCK_TIMEOUT_S = 240
ENV = {
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
    "MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "osmesa", "PYTHONWARNINGS": "ignore",
}


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    lang: str
    attrs: dict
    text: str
    reason: str | None

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def mode(self) -> str:
        if "signature" in self.attrs:
            return "signature"
        if "norun" in self.attrs:
            return "norun"
        if "run" in self.attrs or self.lang in RUN_LANGS:
            return "run"
        return "yaml" if self.lang in ("yaml", "yml") else "prose"


def parse_info(info: str) -> tuple[str, dict]:
    words = info.strip().split()
    lang = words[0].lower() if words else ""
    attrs = dict(w.split("=", 1) if "=" in w else (w, "") for w in words[1:])
    return lang, attrs


def extract_blocks(path: Path) -> list[Block]:
    return extract_blocks_at(path, REPO)


def extract_blocks_at(path: Path, root: Path) -> list[Block]:
    """Fenced blocks of one page (unclosed fences raise, so a broken page fails loudly)."""
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, info = match.groups()
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip().startswith(fence)
                    and not lines[j].strip()[len(fence):].strip()), None)
        if end is None:
            raise AssertionError(f"{path.relative_to(root)}:{i + 1}: unclosed ``` fence")
        prev = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        reason = NORUN_REASON.match(prev)
        lang, attrs = parse_info(info)
        body = "\n".join(line[len(indent):] if line.startswith(indent) else line for line in lines[i + 1:end])
        blocks.append(Block(str(path.relative_to(root)), i + 1, lang, attrs, body + "\n",
                            reason.group(1) if reason else None))
        i = end + 1
    return blocks


ALL_BLOCKS = [b for page in PAGES for b in extract_blocks(page)]
RUN_PAGES = sorted({b.page for b in ALL_BLOCKS if b.mode == "run"})


def _ids(block: Block) -> str:
    return block.where


# ---------------------------------------------------------------- static checks (no store needed)


def test_pages_found():
    assert REPO / "README.md" in PAGES and len(PAGES) > 5


def test_extract_blocks_reads_modes_and_reasons(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# t\n\n```bash\nmotiondata -h\n```\n\n<!-- norun: needs a cluster -->\n```bash norun\n"
                    "ray start --head\n```\n\n```python signature=motiondata.errors\nf(a, *, b=1)\n```\n"
                    "\n```yaml\na: 1\n```\n\n```\nout/demo/\n```\n")
    blocks = [(b.lang, b.mode, b.reason) for b in extract_blocks_at(page, tmp_path)]
    assert blocks == [("bash", "run", None), ("bash", "norun", "needs a cluster"), ("python", "signature", None),
                      ("yaml", "yaml", None), ("", "prose", None)]
    assert list(_signature_calls("f(a, *, b=1) -> int\ng(x: list | None = None, **kw)")) == \
        [("f", ["a", "b"]), ("g", ["x", "kw"])]
    (tmp_path / "bad.md").write_text("```bash\nls\n")
    with pytest.raises(AssertionError, match="unclosed"):
        extract_blocks_at(tmp_path / "bad.md", tmp_path)


def test_no_machine_specific_paths():
    hits = [f"{p.relative_to(REPO)}:{n}: {line.strip()}" for p in PAGES
            for n, line in enumerate(p.read_text().splitlines(), 1) if MACHINE_PATHS.search(line)]
    assert not hits, "docs hold machine-specific absolute paths (use paths relative to the repo):\n" + "\n".join(hits)


def test_blocks_are_marked():
    problems = []
    for b in ALL_BLOCKS:
        unknown = set(b.attrs) - KNOWN_ATTRS
        if unknown:
            problems.append(f"{b.where}: unknown info-string attribute(s) {sorted(unknown)} (use run / norun)")
        if b.mode == "norun" and not b.reason:
            problems.append(f"{b.where}: a norun block needs `<!-- norun: REASON -->` on the line above it")
        if "exit" in b.attrs and not b.attrs["exit"].isdigit():
            problems.append(f"{b.where}: write exit=N with N the expected exit code")
        if b.mode == "signature" and not b.attrs["signature"]:
            problems.append(f"{b.where}: write ```python signature=package.module")
    assert not problems, "\n".join(problems)


SPEC_KEYS = set(json.loads((REPO / "schemas" / "spec.schema.json").read_text())["properties"])


COMMAND = re.compile(r"^\s*(?:\$ )?(?:motiondata|\.venv/bin/\S+|python3?|make|ray|pip) ", re.M)


def test_commands_are_labeled():
    """A block of shell commands says so (```bash, or ```bash norun with a reason), so it is run or explained."""
    unlabeled = [f"{b.where}: {COMMAND.search(b.text).group(0).strip()} ... in a ```{b.lang} block"
                 for b in ALL_BLOCKS if b.mode == "prose" and COMMAND.search(b.text)]
    assert not unlabeled, "label these blocks ```bash (run) or ```bash norun:\n" + "\n".join(unlabeled)


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.mode == "yaml"], ids=_ids)
def test_yaml_block_parses_and_is_a_valid_spec_part(block):
    """A spec or a spec fragment (a `stages:` list, a `samples:` recipe...) passes schemas/spec.schema.json, and
    every stage in it builds with its parameters (no model is loaded)."""
    from motiondata.pipeline.registry import build_stage
    from motiondata.pipeline.spec_schema import schema_problem

    try:
        data = yaml.safe_load(block.text)
    except yaml.YAMLError as exc:
        pytest.fail(f"{block.where}: the yaml block does not parse: {exc}")
    data = {"stages": data} if isinstance(data, list) else data
    if not isinstance(data, dict) or not set(data) <= SPEC_KEYS:
        return
    problem = schema_problem({"name": "docs", "sources": [{"kind": "hdf5", "path": "x.hdf5"}], **data})
    assert problem is None, f"{block.where}: {problem}"
    for stage in data.get("stages") or []:
        build_stage(stage)


def _signature_calls(text: str):
    """(name, [param names]) for every top-level ``name(...)`` in a signature block."""
    for match in re.finditer(r"^(?:def\s+)?(\w+)\(", text, re.M):
        depth, start, params, cur = 1, match.end(), [], ""
        for ch in text[start:]:
            depth += ch in "([{"
            depth -= ch in ")]}"
            if depth == 0 or (depth == 1 and ch == ","):
                params.append(cur)
                cur = ""
                if depth == 0:
                    break
                continue
            cur += ch
        names = [re.match(r"\s*\**(\w*)", p).group(1) for p in params]
        yield match.group(1), [n for n in names if n]


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.mode == "signature"], ids=_ids)
def test_signature_block_matches_code(block):
    module = importlib.import_module(block.attrs["signature"])
    for name, documented in _signature_calls(block.text):
        obj = getattr(module, name, None)
        assert obj is not None, f"{block.where}: {block.attrs['signature']} has no {name}"
        actual = [p for p in inspect.signature(obj).parameters if p != "self"]
        assert documented == actual, f"{block.where}: {name}({', '.join(documented)}) is documented, the code " \
                                     f"has {name}({', '.join(actual)})"


@lru_cache(maxsize=None)
def _cli_help(sub: str) -> str:
    cmd = [str(REPO / ".venv/bin/motiondata"), sub, "-h"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=_env()).stdout


def test_norun_commands_use_real_flags():
    problems = []
    for b in (b for b in ALL_BLOCKS if b.mode == "norun" and b.lang not in PY_LANGS):
        for n, line in enumerate(b.text.splitlines(), b.line + 1):
            words = [w.strip("[]") for w in line.split("#", 1)[0].split()]
            if len(words) < 2 or words[0] != "motiondata":
                continue
            sub = next((w for w in words[1:] if not w.startswith("-")), "")
            helptext = _cli_help(sub)
            assert helptext, f"{b.where}: `motiondata {sub} -h` printed nothing"
            flags = {w.split("=", 1)[0] for w in words if w.startswith("--")}
            problems += [f"{b.page}:{n}: `motiondata {sub}` has no {f}" for f in sorted(flags)
                         if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", helptext)]
    assert not problems, "\n".join(problems)


def test_norun_python_imports_resolve():
    imports = []
    for b in (b for b in ALL_BLOCKS if b.mode == "norun" and b.lang in PY_LANGS):
        tree = ast.parse(b.text, filename=b.where)
        imports += [ast.unparse(node) for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    if imports:
        done = subprocess.run([sys.executable, "-c", "\n".join(imports)], capture_output=True, text=True,
                              timeout=300, env=_env(), cwd=REPO)
        assert done.returncode == 0, f"imports of norun python blocks fail: {done.stderr.strip().splitlines()[-1:]}"


# ---------------------------------------------------------------- running the blocks on a demo store


def _env() -> dict:
    env = {**os.environ, **ENV}
    env["PATH"] = f"{REPO / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)
    return env


SPEC_NAMES = {p.stem for p in (REPO / "pipelines").glob("*.yaml")}


def reduced_spec(name: str, tmp: Path) -> Path:
    """pipelines/NAME.yaml on 4 aloha episodes x 48 frames at 32x32; non-HDF5 sources and their stages left out."""
    spec = yaml.safe_load((REPO / "pipelines" / f"{name}.yaml").read_text())
    robot = [s for s in spec["sources"] if s["kind"] == "hdf5"]
    spec["sources"] = [{**robot[0], "path": str(small_aloha(tmp / f"{name}.hdf5", episodes=4, frames=48))}]
    names = {s.get("name", s["kind"]) for s in spec["sources"]}
    spec["stages"] = [s for s in spec.get("stages", []) if set(s.get("sources", names)) & names]
    spec.setdefault("frames", {})["size"] = [32, 32]
    for stage in spec["stages"]:
        for key in ("model", "tokenizer", "config", "weights", "depth_model"):
            if isinstance(stage.get(key), str) and (REPO / stage[key]).exists():
                stage[key] = str(REPO / stage[key])
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


class DemoStores:
    """Reduced stores of pipelines/NAME.yaml, each built once per session, when a page first reads out/NAME."""

    def __init__(self, root: Path):
        self.root, self.built = root, {}

    def get(self, name: str) -> Path:
        if name not in self.built:
            out = self.root / name
            cmd = ["motiondata", "build", str(reduced_spec(name, self.root)), "--out", str(out), "--executor",
                   "local", "-q"]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_env())
            assert done.returncode == 0, f"the docs' reduced {name} store did not build: {done.stderr[-2000:]}"
            self.built[name] = out
        return self.built[name]


@pytest.fixture(scope="session")
def demo_stores(tmp_path_factory) -> DemoStores:
    return DemoStores(tmp_path_factory.mktemp("docs_stores"))


def stores_read(blocks: list[Block]) -> set[str]:
    """Store names a page reads as out/NAME (NAME a spec in pipelines/) without building them itself."""
    text = "\n".join(b.text for b in blocks)
    read = set(re.findall(r"(?<![\w/.-])out/([\w-]+)(?![\w-])", text))
    return {n for n in read & SPEC_NAMES if not re.search(rf"--out\s+out/{n}(?![\w/-])", text)}


def _workdir(root: Path, stores: DemoStores, names: set[str]) -> Path:
    root.mkdir(parents=True)
    for name in ("pipelines", "data", "schemas", ".venv"):
        (root / name).symlink_to(REPO / name)
    shutil.copytree(REPO / "tokenizers", root / "tokenizers", symlinks=True)
    (root / "out").mkdir()
    for name in sorted(names):
        shutil.copytree(stores.get(name), root / "out" / name)
    return root


def run_block(block: Block, cwd: Path) -> subprocess.CompletedProcess:
    unsafe = UNSAFE.search(block.text)
    if unsafe:  # never start clusters, install packages or download from a docs test
        return subprocess.CompletedProcess([], -1, "", f"`{unsafe.group(0)}`: mark this block ```{block.lang} norun "
                                                       "with a <!-- norun: REASON --> line above it")
    if block.lang in PY_LANGS:
        cmd = [str(REPO / ".venv" / "bin" / "python"), "-c", block.text]
    else:
        cmd = ["bash", "-e", "-o", "pipefail", "-c", block.text]
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                            start_new_session=True)  # its own process group: a timeout ends the whole block
    try:
        out, err = proc.communicate(timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return subprocess.CompletedProcess(cmd, -1, "", f"timed out after {BLOCK_TIMEOUT_S} s")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.parametrize("page", RUN_PAGES)
def test_page_blocks_run(page, demo_stores, tmp_path):
    blocks = [b for b in ALL_BLOCKS if b.page == page and b.mode == "run"]
    cwd = _workdir(tmp_path / "work", demo_stores, stores_read(blocks))
    failures = []
    for block in blocks:
        done = run_block(block, cwd)
        expected = int(block.attrs.get("exit") or 0)
        if done.returncode != expected:
            tail = "\n    ".join((done.stderr or done.stdout).strip().splitlines()[-6:])
            failures.append(f"{block.where} ({block.lang}) exited {done.returncode}, not {expected}:\n    {tail}")
    assert not failures, f"{len(failures)} documented block(s) of {page} fail:\n" + "\n".join(failures)


if __name__ == "__main__":  # the inventory: blocks per page and mode, and each norun reason
    for page in sorted({b.page for b in ALL_BLOCKS}):
        blocks = [b for b in ALL_BLOCKS if b.page == page]
        counts = {m: sum(b.mode == m for b in blocks) for m in ("run", "norun", "signature", "yaml", "prose")}
        sys.stdout.write(f"{page}: {counts}\n")
        for b in blocks:
            if b.mode == "norun":
                sys.stdout.write(f"    norun {b.where}: {b.reason}\n")
