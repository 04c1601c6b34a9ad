"""The documentation: the MkDocs site (mkdocs.yml, docs/) builds with --strict, every page
is in the nav, README.md stays short and links to every page, the relative links of
README.md and CONTRIBUTING.md lead to files and headings that exist, and every registered
model has an API section generated from its class docstring."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MKDOCS_YML = ROOT / "mkdocs.yml"
README = ROOT / "README.md"
MAX_README_LINES = 250
#: what `mkdocs build` needs: mkdocs, the material theme, the mkdocstrings handler
SITE_MODULES = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
API = re.compile(r"^:::\s*([\w.]+)", re.MULTILINE)


def missing_site_modules() -> list[str]:
    missing = []
    for name in SITE_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(name)
    return missing


def outside_fences(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """The anchor GitHub (and MkDocs' toc) give a heading: lower case, punctuation
    dropped, spaces turned into hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"[`*]", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings (repeats get -1, -2, … as on GitHub)."""
    seen: dict[str, int] = {}
    found = set()
    for line in outside_fences(path.read_text(encoding="utf-8")):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def relative_links(path: Path) -> list[str]:
    """Every link target in a Markdown file that is not a URL (http:, mailto:, …)."""
    targets = []
    for line in outside_fences(path.read_text(encoding="utf-8")):
        prose = re.sub(r"`[^`]*`", "", line)  # code spans hold no links
        targets += [t for t in LINK.findall(prose) if not SCHEME.match(t)]
    return targets


def broken_links(path: Path) -> list[str]:
    """The relative links of ``path`` whose file, or heading anchor, does not exist."""
    broken = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with the anchor #{anchor}")
    return broken


def nav_pages(nav) -> list[str]:
    """The page paths of an mkdocs.yml nav (nested sections included)."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [p for value in nav.values() for p in nav_pages(value)]
    if isinstance(nav, list):
        return [p for item in nav for p in nav_pages(item)]
    return []


def docs_pages() -> set[str]:
    return {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}


def registered_models() -> list[str]:
    """``sea.models.<file>.<Class>`` of every class decorated with ``@register``."""
    found = []
    for path in sorted((ROOT / "sea" / "models").glob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if not isinstance(node, ast.ClassDef):
                continue
            decorators = node.decorator_list
            names = [getattr(d, "id", getattr(d, "attr", None)) for d in decorators]
            if "register" in names:
                found.append(f"sea.models.{path.stem}.{node.name}")
    return found


def test_mkdocs_build_strict_succeeds(tmp_path):
    missing = missing_site_modules()
    if missing:
        reason = f"the docs build needs {', '.join(missing)}"
        pytest.skip(f"{reason}, not installed here (pip install -e '.[dev]')")
    site = tmp_path / "site"
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict"]
    cmd += ["--config-file", str(MKDOCS_YML), "--site-dir", str(site)]
    env = os.environ | {"NO_MKDOCS_2_WARNING": "1"}  # a banner, not a build warning
    opts = {"cwd": ROOT, "env": env, "capture_output": True, "text": True}
    result = subprocess.run(cmd, check=False, timeout=600, **opts)
    output = f"{result.stdout}\n{result.stderr}"
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{output}"
    # every `::: identifier` became an API section with that anchor
    for page in sorted(DOCS.rglob("*.md")):
        html = site / page.relative_to(DOCS).with_suffix("") / "index.html"
        if page.name == "index.md":
            html = site / page.relative_to(DOCS).parent / "index.html"
        for ident in API.findall(page.read_text(encoding="utf-8")):
            built = html.read_text(encoding="utf-8")
            assert f'id="{ident}"' in built, f"{page}: no API section for {ident}"


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    msg = f"README.md has {n} lines; keep it under {MAX_README_LINES}"
    assert n < MAX_README_LINES, f"{msg} and move the details to docs/"


@pytest.mark.parametrize("name", ["README.md", "CONTRIBUTING.md"])
def test_relative_links_resolve(name):
    assert broken_links(ROOT / name) == [], f"broken links in {name}"


def test_readme_links_every_docs_page():
    targets = [t.partition("#")[0] for t in relative_links(README)]
    linked = {(ROOT / t).resolve() for t in targets}
    unlisted = sorted(p for p in docs_pages() if (DOCS / p).resolve() not in linked)
    assert unlisted == [], "docs pages the README's list does not link to"


def test_every_docs_page_is_in_the_nav():
    nav = nav_pages(yaml.safe_load(MKDOCS_YML.read_text(encoding="utf-8"))["nav"])
    assert len(nav) == len(set(nav)), "a page is in the nav twice"
    assert sorted(docs_pages() - set(nav)) == [], "pages missing from mkdocs.yml's nav"
    assert sorted(set(nav) - docs_pages()) == [], "nav entries without a page"


def test_every_registered_model_has_an_api_section():
    models = registered_models()
    assert len(models) >= 7
    documented = set()
    for page in (DOCS / "models").glob("*.md"):
        documented |= set(API.findall(page.read_text(encoding="utf-8")))
    assert sorted(set(models) - documented) == [], "models without a docs page"


def test_the_checks_catch_what_they_look_for(tmp_path):
    """The helpers above report a missing file, a missing anchor and an unlisted page."""
    (tmp_path / "there.md").write_text("# A title\n\n## Some `code` here\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md#some-code-here) [gone](missing.md) [bad](there.md#nope)\n"
        "[web](https://example.org/x) `[code](not-a-link.md)`\n"
        "```\n[fenced](not-a-link-either.md)\n```\n"
    )
    assert broken_links(page) == [
        "missing.md: no such file",
        "there.md#nope: no heading with the anchor #nope",
    ]
    nav = [{"Home": "index.md"}, {"Part": ["a.md", {"B": "b.md"}]}]
    assert nav_pages(nav) == ["index.md", "a.md", "b.md"]
    assert slug("Datasets: the catalog") == "datasets-the-catalog"
    assert slug("The stages (`dvc.yaml`)") == "the-stages-dvcyaml"
