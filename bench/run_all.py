"""Run every benchmark in bench/ (``bench_*.py``) on SQLite and, when configured, PostgreSQL.

    python bench/run_all.py [extra arguments for each benchmark, e.g. --duration 5]

``make bench`` runs this after sourcing ``var/test-services.env``. Each benchmark
takes ``--database sqlite|postgresql`` (repeatable) and prints its own table;
PostgreSQL is skipped, with a note, when ``NEFOS_TEST_POSTGRES_URL`` is not set.
See docs/benchmarks.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
TIMEOUT = 30 * 60  # per benchmark script, all backends


def main(argv: list[str]) -> int:
    backends = ["sqlite"]
    if os.environ.get("NEFOS_TEST_POSTGRES_URL"):
        backends.append("postgresql")
    else:
        print("NEFOS_TEST_POSTGRES_URL is not set: PostgreSQL skipped (run `make bench`).")
    failed = []
    for script in sorted(BENCH_DIR.glob("bench_*.py")):
        print(f"\n=== {script.name} ({', '.join(backends)})", flush=True)
        args = [a for b in backends for a in ("--database", b)]
        try:
            done = subprocess.run(
                [sys.executable, str(script), *args, *argv], timeout=TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired:
            print(f"{script.name}: timed out after {TIMEOUT} s", file=sys.stderr)
            failed.append(script.name)
            continue
        if done.returncode != 0:
            failed.append(script.name)
    if failed:
        print(f"\nFailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
