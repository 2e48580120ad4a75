"""The docs site builds with ``mkdocs build --strict``, and every code block in README.md
and docs/ is either run here or marked, on the line above it, with
``<!-- not run: <why> -->``. Run here: YAML blocks are job specs and must validate (a
block without a target gets one, as a flag would give it); Python blocks are executed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline import spec

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([\w+-]*)\n(.*?)^```\n", re.M | re.S)
MARKER = re.compile(r"<!-- not run: \S.* -->\n$")


def blocks(page: Path) -> list[tuple[str, str, str]]:
    """(language, code, the line above) of each fenced block of ``page``."""
    text = page.read_text()
    found = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].splitlines(keepends=True)
        found.append((m.group(1), m.group(2), before[-1] if before else ""))
    return found


ALL = [(p, *b) for p in PAGES for b in blocks(p)]
RUN = [a for a in ALL if not MARKER.match(a[3])]


def test_the_site_builds_strict(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    # Every code block on the site is a fenced one this file checks (no indented block
    # slips past the marker rule).
    html = "".join(f.read_text() for f in (tmp_path / "site").rglob("*.html"))
    fenced_on_site = sum(1 for p, *_ in ALL if p.parent.name == "docs")
    assert html.count("<pre>") + html.count("<pre ") == fenced_on_site


def test_every_block_is_run_or_says_why_not():
    unknown = [(p.name, lang) for p, lang, *_ in RUN if lang not in ("yaml", "python")]
    assert not unknown, f"blocks neither run by tests/test_docs.py nor marked not run: {unknown}"
    assert len(RUN) >= 3  # the job files in README and docs/jobs.md


@pytest.mark.parametrize(
    "page, code",
    [(p, code) for p, lang, code, _ in RUN if lang == "yaml"],
    ids=lambda v: v.name if isinstance(v, Path) else "",
)
def test_yaml_blocks_are_valid_job_specs(page, code):
    doc = yaml.safe_load(code)
    assert isinstance(doc, dict), f"{page.name}: a YAML block that is no mapping"
    spec.parse(spec.merge({"target": {"speedup": 2}}, doc))


@pytest.mark.parametrize(
    "page, code",
    [(p, code) for p, lang, code, _ in RUN if lang == "python"],
    ids=lambda v: v.name if isinstance(v, Path) else "",
)
def test_python_blocks_run(page, code, tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, f"{page.name}: {out.stderr[-2000:]}"


def test_the_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    named = set(re.findall(r"`(docs/[\w.]+)`", text))
    assert {"docs/python.md", "docs/jobs.md", "docs/architecture.md"} <= named
    missing = [n for n in named if not (ROOT / n).exists()]
    assert not missing, f"README names docs that do not exist: {missing}"
