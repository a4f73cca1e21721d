"""The JavaScript the web console ships to its first page, against its budget.

    python bench/bench_console_bundle.py [--build DIR]

Reads the console's build (``scripts/ensure-console.sh`` makes it) the way a browser
loads the first page: ``index.html``'s module scripts and the modules it preloads
(their static imports), not the chunks loaded later on demand. Prints each file's
size raw, gzip-compressed (level 9, as this script compresses it) and
brotli-compressed (the build's ``.br`` twin, which ``nefos serve`` sends to browsers
that accept it), and the ratio of the total against issue 18's budget: 150 KB
compressed. Takes and ignores ``--database`` (bench/run_all.py passes it to every
benchmark). See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import gzip
import sys
from html.parser import HTMLParser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "src" / "nefos" / "api" / "console_dist"
BUDGET = 150 * 1024


class FirstPage(HTMLParser):
    """The shell's module scripts, preloaded modules and stylesheets, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self.styles: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script" and a.get("src"):
            self.scripts.append(str(a["src"]))
        elif tag == "link" and a.get("rel") == "modulepreload" and a.get("href"):
            self.scripts.append(str(a["href"]))
        elif tag == "link" and a.get("rel") == "stylesheet" and a.get("href"):
            self.styles.append(str(a["href"]))


def sizes(build: Path, url: str) -> tuple[str, int, int, int | None]:
    path = build / url.lstrip("/")
    data = path.read_bytes()
    br = path.with_name(path.name + ".br")
    return (
        url,
        len(data),
        len(gzip.compress(data, compresslevel=9, mtime=0)),
        br.stat().st_size if br.is_file() else None,
    )


def kb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024:.1f} KB"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", type=Path, default=BUILD)
    parser.add_argument("--database", action="append", help="ignored (no database here)")
    args = parser.parse_args(argv)
    index = args.build / "index.html"
    if not index.is_file():
        print(f"no console build at {args.build}: run `make console`", file=sys.stderr)
        return 1
    page = FirstPage()
    page.feed(index.read_text())
    if not page.scripts:
        print("index.html loads no script: not a console build?", file=sys.stderr)
        return 1
    rows = [sizes(args.build, url) for url in dict.fromkeys(page.scripts)]
    styles = [sizes(args.build, url) for url in dict.fromkeys(page.styles)]
    print(f"{'file':<40} {'raw':>10} {'gzip':>10} {'brotli':>10}")
    for url, raw, gz, br in [*rows, *styles]:
        print(f"{url:<40} {kb(raw):>10} {kb(gz):>10} {kb(br):>10}")
    raw_js = sum(r[1] for r in rows)
    gz_js = sum(r[2] for r in rows)
    br_values = [r[3] for r in rows]
    br_js = None if None in br_values else sum(v for v in br_values if v is not None)
    print(f"{'JavaScript, first page':<40} {kb(raw_js):>10} {kb(gz_js):>10} {kb(br_js):>10}")
    print(
        f"budget {kb(BUDGET)} compressed: gzip uses {gz_js / BUDGET:.2f} of it "
        f"({BUDGET / gz_js:.1f}x headroom)"
        + (f", brotli {br_js / BUDGET:.2f}" if br_js is not None else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
