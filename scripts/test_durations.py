#!/usr/bin/env python3
"""Write tests/durations.json from a pytest JUnit XML report (``--junitxml``): what
each test file took, summed over its tests, the slowest first. tests/conftest.py
hands the slowest files to the workers first."""

from __future__ import annotations

import collections
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tests" / "durations.json"
QUICK = 20.0  # seconds: files below this are left out (they count as quick)


def per_file(report: Path) -> dict[str, float]:
    totals: collections.Counter[str] = collections.Counter()
    for case in ET.parse(report).getroot().iter("testcase"):  # noqa: S314
        parts = (case.get("classname") or "").split(".")
        module = next((i for i, p in enumerate(parts) if p.startswith("test_")), None)
        if module is None:
            continue
        totals["/".join(parts[: module + 1]) + ".py"] += float(case.get("time") or 0)
    return {f: round(s, 1) for f, s in totals.most_common() if s >= QUICK}


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: scripts/test_durations.py JUNIT_XML")
    OUT.write_text(json.dumps(per_file(Path(sys.argv[1])), indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
