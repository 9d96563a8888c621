"""The documentation holds together: README is a short guide whose results table comes from the results files,
every relative link resolves, and source comments carry no benchmark figures (those live in docs/ and BENCHMARKS.md)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README_MAX_BYTES = 12 * 1024
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)\s]*)?\)")


def test_readme_is_a_short_guide_opening_with_the_set_up_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) <= README_MAX_BYTES
    lines = text.splitlines()
    assert lines[3].startswith("# 1. install") and lines[5] == "# 2. run the tests"   # .ci/run reads the next line
    assert lines[6].endswith(".venv/bin/python -m pytest -p no:cacheprovider")


def test_readme_results_table_is_the_summary_of_the_results_files():
    from benchmarks.summary import readme_table

    text = (ROOT / "README.md").read_text()
    assert "\n".join(readme_table()) in text, "paste `python -m benchmarks.summary --readme` into README.md"


def test_relative_links_resolve():
    pages = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in LINK.findall(page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_source_comments_carry_no_benchmark_figures():
    """Comments say what the code does and why; measured figures and their history belong in docs/ and
    BENCHMARKS.md (the same check as `grep -rnE '#.*\\b(disc(_gbm)?|seeds?) [0-9]' src`)."""
    pattern = re.compile(r"#.*\b(disc(_gbm)?|seeds?) [0-9]")
    found = [f"{p.relative_to(ROOT)}:{i}" for p in sorted((ROOT / "src").rglob("*.py"))
             for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not found, found
