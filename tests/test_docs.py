"""The documentation builds, strictly, and stays the front door it should be: a broken link, a page missing from
the navigation, or a decoder, reward kind, engine adapter or setting no page documents fails the suite."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from alignd.decoders import decoder_registry
from alignd.server.settings import Limits, Settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    assert mkdocs, "mkdocs is missing: it comes with the test extra"
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's banner about a future MkDocs, not a warning
    built = subprocess.run(
        [mkdocs, "build", "--strict", "-d", str(out)], cwd=ROOT, capture_output=True, text=True, env=env
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return out


def test_the_site_builds_strictly_with_every_page_in_the_navigation(site):
    pages = {p.stem for p in (ROOT / "docs").glob("*.md")}
    assert {p.parent.name for p in site.glob("*/index.html")} >= pages - {"index"}


def test_the_configuration_page_lists_every_setting_from_the_code(site):
    page = (site / "configuration" / "index.html").read_text()
    for field in Settings.model_fields:
        assert f"<code>{field}</code>" in page, field
    for field in Limits.model_fields:
        assert f"<code>limits.{field}</code>" in page and f"ALIGND_LIMITS__{field.upper()}" in page, field
    assert "urls" in page and "kv_cache_memory_bytes" in page  # both engines' options


def test_every_decoder_page_section_has_its_generated_parameters(site):
    page = (site / "decoders" / "index.html").read_text()
    for name, cls in decoder_registry().items():
        for field in cls.Params.model_fields:
            assert f"<code>{field}</code>" in page, (name, field)


def test_the_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < 200
    head = "\n".join(lines[:8])
    assert "make run" in head and "make test" in head  # both commands first
    for page in (ROOT / "docs").glob("*.md"):
        if page.stem != "index":
            assert f"(docs/{page.name})" in "\n".join(lines), f"the README does not link {page.name}"
