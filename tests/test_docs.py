"""The documentation site builds with `mkdocs build --strict` (a broken link or anchor fails),
and the README keeps the shape the docs promise."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs-material is a dev dependency")
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    built = {p.relative_to(site).parent.as_posix() for p in site.rglob("index.html")}
    for page in (ROOT / "docs").glob("*.md"):  # no nav: every page must be in the site
        name = "." if page.stem == "index" else page.stem
        assert name in built, f"{page.name} is not in the built site"


def test_readme_is_a_front_page_with_working_links():
    text = (ROOT / "README.md").read_text()
    lines = text.splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; details belong in docs/"
    commands = re.findall(r"^\./run\.sh \w+", text, re.M)
    assert sorted(set(commands)) == ["./run.sh demo", "./run.sh test"]
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):  # every relative link points at a file
        if not re.match(r"[a-z]+://", target):
            assert (ROOT / target).exists(), f"README links to {target}, which does not exist"
    assert "docs/report-screenshot.png" in text and (ROOT / "docs" / "report-screenshot.png").exists()


def test_chromium_install_is_in_ci():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "chromium" in ci and "apt-get" in ci
