"""Tests mirror the package: every module has its own test file, or CONTRIBUTING.md's
table names the tests that cover it (and those exist)."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "dynroute"
SECTION = "### Where each module is tested"


def covered_by_table() -> dict[str, list[str]]:
    """Module patterns (relative to the package) -> the test files the table names."""
    text = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    table = text[text.index(SECTION) :].split("\n## ", 1)[0]
    out: dict[str, list[str]] = {}
    for line in table.splitlines():
        cells = line.split(" | ")
        if len(cells) != 2 or not line.startswith("| `"):
            continue
        tests = re.findall(r"`(tests/[^`]+)`", cells[1])
        for module in re.findall(r"`([^`]+\.py)`", cells[0]):
            out[module] = tests
    return out


def test_every_module_has_a_test_file_or_a_row_in_the_table() -> None:
    table = covered_by_table()
    for tests in table.values():
        for test in tests:
            assert (ROOT / test).is_file(), f"CONTRIBUTING.md names a missing test: {test}"
    untested = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if path.name == "__init__.py":
            continue
        mirror = ROOT / "tests" / relative.parent / f"test_{path.stem}.py"
        listed = any(fnmatch.fnmatch(str(relative), pattern) for pattern in table)
        if not mirror.is_file() and not listed:
            untested.append(str(relative))
    assert not untested, "modules with no test file and no row in CONTRIBUTING.md: " + ", ".join(
        untested
    )
