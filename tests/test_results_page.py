"""The results page (scripts/results_page.py -> docs/results.md): the committed page is up to
date with the committed reports, and in a real browser (headless Chromium, Debian's
`chromium` package) the built site shows its figures and its table, and every link on it
resolves. The browser test keeps a screenshot of the page as a test artefact (in
$SEA_TEST_ARTIFACTS, default test-artifacts/, which git ignores)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from shell import env

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import results_page  # noqa: E402

ARTIFACTS = Path(os.environ.get("SEA_TEST_ARTIFACTS", ROOT / "test-artifacts"))
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)

#: Opened by the browser beside the built site: loads the results page in a frame (same
#: origin), waits for its images, then fetches every link of the page and writes what it
#: found as JSON into <pre id="result">.
CHECK_PAGE = """<!DOCTYPE html><html><body><pre id="result">pending</pre>
<iframe id="page" src="results/" width="1280" height="2000"></iframe>
<script>
const frame = document.getElementById("page");
frame.onload = async () => {
  const doc = frame.contentDocument;
  const article = doc.querySelector("article") || doc.body;
  const images = [...article.querySelectorAll("img")];
  await Promise.all(images.map(i => i.complete ? null : new Promise(r => { i.onload = r; i.onerror = r; })));
  const tables = [...article.querySelectorAll("table")].map(t => ({
    header: [...t.querySelectorAll("thead th")].map(c => c.textContent.trim()),
    rows: [...t.querySelectorAll("tbody tr")].map(r => [...r.querySelectorAll("td")].map(c => c.textContent.trim())),
  }));
  const links = [...new Set([...article.querySelectorAll("a[href]")].map(a => a.href.split("#")[0]))]
    .filter(h => h.startsWith(location.origin));
  const status = {};
  for (const h of links) {
    try { status[h] = (await fetch(h)).status; } catch (e) { status[h] = String(e); }
  }
  const modelLinks = [...article.querySelectorAll("table a[href]")].map(a => [a.textContent.trim(), a.href]);
  document.getElementById("result").textContent = JSON.stringify({
    title: doc.title,
    images: images.map(i => ({src: i.getAttribute("src"), width: i.naturalWidth, height: i.naturalHeight,
                              shown: i.getBoundingClientRect().width})),
    tables, status, modelLinks,
  });
};
</script></body></html>
"""


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", data[16:24])


def test_the_committed_page_is_up_to_date(tmp_path):
    written = results_page.build(ROOT, tmp_path / "results.md")
    for path in written:
        committed = ROOT / "docs" / path.relative_to(tmp_path)
        assert committed.is_file() and committed.read_bytes() == path.read_bytes(), (
            f"{committed.relative_to(ROOT)} is stale: run python scripts/results_page.py"
        )
    committed_pngs = sorted(p.name for p in (ROOT / "docs/results").glob("*.png"))
    assert committed_pngs == sorted(p.name for p in written if p.suffix == ".png")


def test_a_model_without_a_page_is_plain_text_and_bad_reports_are_one_line(tmp_path):
    assert results_page.variant_link("x", ["model.name=nosuchmodel"], ROOT) == "x"
    assert (
        results_page.variant_link("lightgcn_mg", ["model.name=lightgcn"], ROOT) == "[lightgcn_mg](models/lightgcn.md)"
    )
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/compare.json").write_text("{not json")
    (tmp_path / "reports/report.md").write_text("# r\n")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts/results_page.py"), "--root", str(tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert "reports/compare.json: cannot read it" in proc.stderr


def chromium(*args: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"]
    cmd += ["--no-first-run", "--disable-extensions", "--user-data-dir=" + str(ARTIFACTS / ".chromium-profile"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install chromium)")
def test_the_results_page_renders_in_a_browser(tmp_path, serve_dir):
    from test_docs import missing_site_modules

    if missing := missing_site_modules():
        pytest.skip(f"the docs build needs {', '.join(missing)}")
    site = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=os.environ | {"NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (site / "__check.html").write_text(CHECK_PAGE)
    base = serve_dir(site)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    dom = chromium("--virtual-time-budget=30000", "--window-size=1280,2000", "--dump-dom", f"{base}/__check.html")
    found = re.search(r'<pre id="result">(.*?)</pre>', dom.stdout, re.DOTALL)
    assert found and found.group(1) != "pending", (
        f"the check page did not finish:\n{dom.stdout[-2000:]}{dom.stderr[-2000:]}"
    )
    result = json.loads(html.unescape(found.group(1)))

    # the figures: every one loaded at its file's own size, and shown
    figures = {Path(i["src"]).name: i for i in result["images"]}
    expected = sorted(p.name for p in (ROOT / "docs/results").glob("*.png"))
    assert sorted(figures) == expected and "selection.png" in expected
    for name, img in figures.items():
        assert (img["width"], img["height"]) == png_size(ROOT / "docs/results" / name), img
        assert img["shown"] > 100, img

    # the comparison table: one row per variant of compare.json, in the page's order
    comp = json.loads((ROOT / "reports/compare.json").read_text())
    table = next(t for t in result["tables"] if t["header"][:2] == ["variant", f"test {comp['select']}"])
    names = [r[0] for r in table["rows"]]
    assert sorted(names) == sorted("most popular" if n == "most_popular" else n for n in comp["rows"])
    means = [float(r[1].split(" ")[0]) for r in table["rows"]]
    assert means == sorted(means, reverse=True)

    # every link on the page resolves, and each model's page is linked
    assert result["status"] and all(s == 200 for s in result["status"].values()), result["status"]
    linked = {text: href for text, href in result["modelLinks"]}
    for name, row in comp["rows"].items():
        model = results_page.model_of(row["overrides"])
        if model:
            assert linked[name].rstrip("/").endswith(f"/models/{model}"), (name, linked.get(name))

    shot = ARTIFACTS / "results-page.png"
    shot.unlink(missing_ok=True)
    chromium("--window-size=1280,4000", f"--screenshot={shot}", f"{base}/results/")
    width, height = png_size(shot)
    assert (width, height) == (1280, 4000) and shot.stat().st_size > 50_000  # a page, not a blank


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install chromium)")
def test_dvc_plots_show_renders_without_network(tmp_path):
    """`dvc plots show` uses .dvc/plots/offline.html (plots.html_template in .dvc/config):
    the page it writes loads no script from the network, and a browser with every host
    unreachable draws every plot whose data exists."""
    out = tmp_path / "plots"
    proc = subprocess.run(
        ["dvc", "plots", "show", "-o", str(out)], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    page = (out / "index.html").read_text()
    assert not re.search(r"<script[^>]+src=", page), "a script is loaded from elsewhere"
    for package in ("vega@5.33.1", "vega-lite@5.23.0", "vega-embed@6.29.0"):
        assert f"/* {package} */" in page
    offline = ["--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9"]
    dom = chromium(*offline, "--virtual-time-budget=20000", "--dump-dom", (out / "index.html").as_uri())
    plots = re.findall(r"vegaEmbed\('#([^']+)'", page)
    drawn = dom.stdout.count('class="marks"')  # vega-embed's drawing: one per plot, empty axes where no data yet
    assert "comparison_selection" in plots and drawn == len(plots), (plots, drawn, dom.stderr[-2000:])
