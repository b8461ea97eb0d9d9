"""The browser check sees a notebook stored empty again and a broken image (``make docs-check``).

Not part of ``pytest tests`` (it needs Chromium and the executed notebooks of ``make
notebooks``); ``make docs-check`` runs it before checking the real site.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tools.site_check import ROOT, check_site, notebook_pages

PLANTED_IMAGE = '<img src="images/planted-missing.png" alt="planted broken link">'
PLANTED_ERROR = '<script>console.error("planted console error")</script>'


def _build(site, executed, strict: bool) -> subprocess.CompletedProcess:
    env = {**os.environ, "NB_EXECUTED_ROOT": str(executed), "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--quiet", "--site-dir", str(site),
         "--strict" if strict else "--no-strict"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A site built with the first notebook stored empty; a broken image and a console error
    planted on the home page."""
    tmp = tmp_path_factory.mktemp("planted")
    executed = tmp / "executed"
    shutil.copytree(ROOT / "build" / "executed" / "notebooks", executed / "notebooks")
    first = sorted((ROOT / "notebooks").glob("*.ipynb"))[0]
    shutil.copy(first, executed / "notebooks" / first.name)  # its outputs gone, as stored
    strict = _build(tmp / "strict", executed, strict=True)
    site = tmp / "site"
    lax = _build(site, executed, strict=False)
    assert lax.returncode == 0, lax.stderr
    home = site / "index.html"
    html = home.read_text(encoding="utf-8")
    assert "<article" in html
    html = html.replace("<article", PLANTED_IMAGE + PLANTED_ERROR + "<article", 1)
    home.write_text(html, encoding="utf-8")
    return site, strict, first


def test_the_strict_build_refuses_a_notebook_without_its_executed_copy(planted):
    _, strict, first = planted
    assert strict.returncode != 0
    assert f"notebooks/{first.name}" in strict.stderr and "make notebooks" in strict.stderr


def test_the_browser_check_fails_on_an_empty_notebook_page_and_a_broken_image(planted, tmp_path):
    """Each planted fault is reported on its page, and nothing else is."""
    site, _, _ = planted
    pages = notebook_pages()
    home, empty, full = check_site(site, ["index.html"], pages[:2], out=tmp_path)
    assert any("planted-missing.png" in p for p in home.problems), home.problems
    assert any("image did not load" in p for p in home.problems), home.problems
    assert "console error: planted console error" in home.problems, home.problems
    assert empty.output_images == 0
    assert empty.problems == [
        "notebook page without output images (stored or rendered empty?)"]
    # the executed notebook beside it passes: the failures are the planted ones
    assert full.problems == [] and full.output_images > 0
    assert (tmp_path / "index.png").stat().st_size > 0
