"""The documentation's code blocks run, and its links lead somewhere.

Every fenced code block in README.md, CONTRIBUTING.md, benchmarks/README.md and docs/*.md
carries one of these info strings (what follows the opening fence):

- ``bash``, ``python``: an example that runs in seconds. The slow test runs it.
- ``bash long``, ``python long``: takes minutes or hours, or needs the internet, a GPU, your
  own files, or changes your installation. Only its syntax is checked.
- ``text``: output, or a picture. Never run.

Anything else (no info string, ``sh``, ``console``, ``python3``, ...) fails
``test_code_blocks_are_marked``, so a new block is either run or consciously marked.

The runnable blocks of one file run in document order, in one fresh working directory laid
out like a checkout: ``src``, ``tests``, ``benchmarks``, ``examples``, ``docs`` and
``pyproject.toml`` link to this repository, ``results/`` is a copy (commands may redraw it),
and ``../shared/data`` links to the offline datasets, as in CI. So a block may use what an
earlier block of the same file made (a run directory, a folder of images). Bash blocks run
with ``bash -euo pipefail``, Python blocks with this interpreter; each must exit 0. The
environment has ``DYNROUTE_DATA`` (the offline copies), ``DYNROUTE_CACHE`` (this test
session's dataset cache, or the one the environment names, so datasets are built once),
``RUN`` (a copy of a 4-iteration actor chain, trained once per session on 3,000 hybrid
images with a 500-image validation split: for examples that take any run directory), and
``dynroute``, ``python`` and ``python3`` on PATH (this interpreter, this checkout's ``src``
first).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUNNABLE = ("bash", "python")
LONG = ("bash long", "python long")
OUTPUT = ("text",)
INFO_STRINGS = (*RUNNABLE, *LONG, *OUTPUT)
#: The README line .ci/run runs verbatim; it must stay in the README's set-up block.
CI_TEST_COMMAND = "DYNROUTE_DATA=../shared/data python3 -m pytest -q"
README_MAX_LINES = 150
BLOCK_TIMEOUT = 900  # seconds; a runnable block should take seconds, this only stops a hang
FENCE = re.compile(r"^(`{3,}|~{3,})(.*)$")
INDENTED_FENCE = re.compile(r"^\s+(`{3,}|~{3,})")
LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"(`+)[^`\n].*?\1")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def doc_files() -> list[Path]:
    """The documents whose code blocks are checked, README first."""
    return [
        REPO / "README.md",
        REPO / "CONTRIBUTING.md",
        REPO / "benchmarks" / "README.md",
        *sorted((REPO / "docs").glob("*.md")),
    ]


def relative(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it opens, its info string and its text."""

    path: Path
    line: int  # 1-based line of the opening fence
    info: str
    code: str
    closed: bool = True

    @property
    def where(self) -> str:
        return f"{relative(self.path)}:{self.line}"

    @property
    def language(self) -> str:
        return self.info.split()[0] if self.info else ""

    @property
    def runnable(self) -> bool:
        return self.info in RUNNABLE


def parse(path: Path) -> tuple[list[Block], list[str]]:
    """The fenced blocks of a markdown file, and the lines outside them (blocks blanked)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    prose: list[str] = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            prose.append(lines[i])
            i += 1
            continue
        fence, info = match.group(1), " ".join(match.group(2).split())
        closing = re.compile(re.escape(fence[0]) + "{" + str(len(fence)) + r",}\s*$")
        start, body = i, []
        i += 1
        while i < len(lines) and not closing.match(lines[i]):
            body.append(lines[i])
            i += 1
        closed = i < len(lines)
        blocks.append(Block(path, start + 1, info, "\n".join(body) + "\n", closed))
        prose.extend([""] * (len(body) + 1 + int(closed)))
        i += 1
    return blocks, prose


def code_blocks(path: Path) -> list[Block]:
    return parse(path)[0] if path.exists() else []


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    counts: dict[str, int] = {}
    for line in parse(path)[1]:
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            n = counts.get(base, 0)
            counts[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


# ---------------------------------------------------------------- fast: marking and links
def test_every_document_exists():
    missing = [relative(p) for p in doc_files() if not p.exists()]
    assert not missing, f"missing documents: {missing}"


def test_code_blocks_are_marked():
    problems = []
    for path in doc_files():
        if not path.exists():
            continue
        blocks, prose = parse(path)
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if INDENTED_FENCE.match(line) and prose[number - 1] == line:
                problems.append(
                    f"{relative(path)}:{number}: indented code fence (start fences at column "
                    "0, so this test sees the block)"
                )
        for block in blocks:
            if not block.closed:
                problems.append(f"{block.where}: code block never closed")
            if block.info not in INFO_STRINGS:
                shown = repr(block.info) if block.info else "no info string"
                problems.append(
                    f"{block.where}: {shown}; mark the block {', '.join(INFO_STRINGS)} "
                    "(see tests/test_docs.py)"
                )
            elif block.language == "python":
                try:
                    compile(block.code, block.where, "exec")
                except SyntaxError as exc:
                    problems.append(f"{block.where}: Python syntax error: {exc}")
            elif block.language == "bash":
                check = subprocess.run(
                    ["bash", "-n"], input=block.code, capture_output=True, text=True, timeout=30
                )
                if check.returncode != 0:
                    problems.append(f"{block.where}: bash syntax error: {check.stderr.strip()}")
    assert not problems, "\n".join(problems)


def test_relative_links_resolve():
    problems = []
    for path in doc_files():
        if not path.exists():
            continue
        for number, line in enumerate(parse(path)[1], 1):
            for target in LINK.findall(INLINE_CODE.sub("", line)):
                if SCHEME.match(target):
                    continue
                file_part, _, anchor = target.partition("#")
                linked = (path.parent / file_part).resolve() if file_part else path
                where = f"{relative(path)}:{number}: link {target!r}"
                if not linked.exists():
                    problems.append(f"{where}: no such file")
                elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                    problems.append(f"{where}: no heading with anchor #{anchor}")
    assert not problems, "\n".join(problems)


def test_readme_is_a_short_front_door_with_the_ci_test_command():
    readme = REPO / "README.md"
    lines = readme.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"
    # .ci/run runs the README's test command verbatim: keep it in a set-up block.
    assert any(
        block.language == "bash" and any(CI_TEST_COMMAND in ln for ln in block.code.splitlines())
        for block in code_blocks(readme)
    ), f"README.md lost its test command {CI_TEST_COMMAND!r}"


# ---------------------------------------------------------------- slow: run the examples
@dataclass(frozen=True)
class DocsSession:
    root: Path
    data_dir: Path
    env: dict[str, str]
    run: Path


def _shim(path: Path, command: str) -> None:
    path.write_text(f'#!/bin/sh\nexec {command} "$@"\n')
    path.chmod(0o755)


@pytest.fixture(scope="session")
def docs_session(real_data_dir, real_cache_dir, hybrid_subset, tmp_path_factory) -> DocsSession:
    """What every runnable block gets: data, a shared dataset cache, commands, a tiny run."""
    root = tmp_path_factory.mktemp("docs")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    python = f'"{sys.executable}"'
    _shim(bin_dir / "dynroute", f"{python} -m dynroute.cli")
    for name in ("python", "python3"):
        _shim(bin_dir / name, python)
    pythonpath = [str(REPO / "src"), os.environ.get("PYTHONPATH", "")]
    env = {
        **os.environ,
        "DYNROUTE_DATA": str(real_data_dir),
        "DYNROUTE_CACHE": os.environ.get("DYNROUTE_CACHE") or str(real_cache_dir),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join(p for p in pythonpath if p),
        "XDG_CACHE_HOME": str(root / "user-cache"),  # never the user's own cache
        "MPLBACKEND": "Agg",
        "PYTHONUNBUFFERED": "1",
    }
    # RUN: real hybrid images, but few, so that commands on it evaluate in seconds.
    run = root / "run"
    command = [
        sys.executable, "-m", "dynroute.cli", "train", "--dataset", f"npz:{hybrid_subset}",
        "--k-cpt", "4e-9", "--iterations", "4", "--eval-every", "4", "--validation-size", "500",
        "--no-progress", "--out", str(run),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    return DocsSession(root, real_data_dir, env, run)


def checkout_like(work_root: Path, session: DocsSession) -> Path:
    """A working directory laid out like a checkout beside ../shared (see the module doc)."""
    work = work_root / "checkout"
    work.mkdir()
    for name in ("src", "tests", "benchmarks", "examples", "docs", "pyproject.toml", ".ci"):
        if (REPO / name).exists():
            (work / name).symlink_to(REPO / name)
    if (REPO / "results").is_dir():
        shutil.copytree(REPO / "results", work / "results")
    shared = work_root / "shared"
    shared.mkdir()
    (shared / "data").symlink_to(session.data_dir)
    tools = REPO.parent / "shared" / "tools"
    if tools.is_dir():
        (shared / "tools").symlink_to(tools)
    shutil.copytree(session.run, work / "runs" / "example")
    return work


def run_block(block: Block, work: Path, env: dict[str, str], scripts: Path) -> tuple[int, str]:
    if block.language == "bash":
        command = ["bash", "-euo", "pipefail", "-c", block.code]
    else:
        script = scripts / f"{block.path.stem}-{block.line}.py"
        script.write_text(block.code, encoding="utf-8")
        command = [sys.executable, str(script)]
    try:
        done = subprocess.run(
            command, cwd=work, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT
        )
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or "") + (exc.stderr or "")
        return -1, f"timed out after {BLOCK_TIMEOUT} s\n{output}"
    return done.returncode, done.stdout + done.stderr


DOCS_WITH_EXAMPLES = [p for p in doc_files() if any(b.runnable for b in code_blocks(p))]


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.parametrize("path", DOCS_WITH_EXAMPLES, ids=relative)
def test_doc_examples_run(path: Path, docs_session: DocsSession, tmp_path: Path):
    work = checkout_like(tmp_path, docs_session)
    env = {**docs_session.env, "RUN": str(work / "runs" / "example")}
    scripts = tmp_path / "blocks"
    scripts.mkdir()
    timings = []
    for block in code_blocks(path):
        if not block.runnable:
            continue
        started = time.perf_counter()
        status, output = run_block(block, work, env, scripts)
        timings.append(f"{block.where}: {time.perf_counter() - started:.1f} s")
        if status != 0:
            pytest.fail(
                f"{block.where} ({block.info}) exited {status}:\n{block.code}\n"
                f"--- its output, last 4,000 characters ---\n{output[-4000:]}",
                pytrace=False,
            )
    print("\n".join(timings))
