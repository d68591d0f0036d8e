"""The gallery page's HTML, CSS and JS are package data: the wheel must ship them (pyproject's
package-data covers every file in leaderboard/assets/) and the page inlines them whole."""
from __future__ import annotations

import fnmatch
import tomllib
from importlib import resources
from pathlib import Path

from ciebench.leaderboard.gallery import render_html

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_ships_every_gallery_asset():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"]["ciebench.leaderboard"] == "leaderboard"
    globs = config["package-data"]["ciebench.leaderboard"]
    assets = sorted(p.relative_to(ROOT / "leaderboard").as_posix() for p in (ROOT / "leaderboard" / "assets").iterdir())
    assert assets == ["assets/gallery.css", "assets/gallery.html", "assets/gallery.js"]
    for asset in assets:
        assert any(fnmatch.fnmatch(asset, g) for g in globs), f"{asset} is not in pyproject's package-data {globs}"


def test_the_page_inlines_the_packaged_css_and_js():
    folder = resources.files("ciebench.leaderboard").joinpath("assets")
    css, js = (folder.joinpath(n).read_text(encoding="utf-8") for n in ("gallery.css", "gallery.js"))
    page = render_html({"title": "a <b> & {{JS}}", "metrics": [], "samples": []})
    assert f"<style>{css}</style>" in page and f"<script>{js}</script>" in page
    assert "<title>a &lt;b&gt; &amp; {{JS}}</title>" in page  # placeholders are filled in one pass, text escaped
    assert not any(f"{{{{{k}}}}}" in page for k in ("TITLE", "DATA", "CSS"))  # every placeholder filled
    assert page.count("{{JS}}") == 3  # only the title's own text (<title>, <h1>, the data): not expanded again
