"""Build the HTML template that makes `dvc plots show` work offline.

    npm pack vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0     # the three tarballs, here
    python scripts/vega_template.py --packs .                   # writes .dvc/plots/offline.html

DVC's default HTML page loads Vega, Vega-Lite and vega-embed from a CDN, so `dvc plots show`
gives a blank page on a machine without network. This script takes the minified builds out of
the npm tarballs (checked against the sha256 pinned below), inlines them into one page with
DVC's `{plot_divs}` placeholder, and writes it to .dvc/plots/offline.html, which
.dvc/config names as `plots.html_template`. The page has no `{scripts}` placeholder, so DVC's
CDN script tags are left out. The vendored files' licences and versions are in
.dvc/plots/vendor/ (docs/sharing.md, "Plots offline").
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's sea/, also without an install

from sea.cli import run_main  # noqa: E402
from sea.errors import DataError  # noqa: E402
from sea.files import write_text  # noqa: E402

#: package -> (version, sha256 of the npm tarball, file inside it); load order matters
PACKAGES = {
    "vega": (
        "5.33.1",
        "1b8504b6731c5311be3269c4d84ca996a5cc293bc772283293ede20c490e16c3",
        "package/build/vega.min.js",
    ),
    "vega-lite": (
        "5.23.0",
        "e4cbfdd8f6f1abe381c59cd558fd6a559c12b1496bfdf2e0c3295263a40fe4da",
        "package/build/vega-lite.min.js",
    ),
    "vega-embed": (
        "6.29.0",
        "ecf1ee709c2bac9e0a4ead6908114b05b62c71493e10a8a4308109bb070f8eb1",
        "package/build/vega-embed.min.js",
    ),
}
OUT = Path(".dvc/plots/offline.html")
PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- Built by scripts/vega_template.py from npm: {versions}. Licences: .dvc/plots/vendor/ -->
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def script(package: str, tarball: Path) -> str:
    """The minified build of ``package`` from its verified npm tarball, as a script tag."""
    version, sha256, member = PACKAGES[package]
    data = tarball.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise DataError(f"{tarball.as_posix()}: sha256 differs from the pin for {package}@{version}")
    with tarfile.open(tarball) as tar:
        js = tar.extractfile(member).read().decode("utf-8")
    if "</script" in js or any(f"{{{p}}}" in js for p in ("scripts", "plot_divs", "refresh_tag")):
        raise DataError(f"{tarball.as_posix()}: {member} cannot be inlined (holds </script or a DVC placeholder)")
    return f'    <script type="text/javascript">/* {package}@{version} */\n{js}\n    </script>'


def page(packs: Path) -> str:
    tags = []
    for package, (version, _, _) in PACKAGES.items():
        tarball = packs / f"{package}-{version}.tgz"
        if not tarball.is_file():
            raise DataError(f"{tarball.as_posix()}: missing; run `npm pack {package}@{version}` there")
        tags.append(script(package, tarball))
    versions = ", ".join(f"{p}@{v[0]}" for p, v in PACKAGES.items())
    return PAGE.format(versions=versions, scripts="\n".join(tags))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packs", type=Path, default=Path("."), help="folder with the npm tarballs (default: here)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"the template (default {OUT})")
    args = parser.parse_args(argv)
    write_text(args.out, page(args.packs))
    print(f"wrote {args.out.as_posix()}")


if __name__ == "__main__":
    run_main(main, "vega_template")
