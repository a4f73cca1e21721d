"""Run every benchmark in bench/ (``bench_*.py``) on SQLite and, when configured, PostgreSQL.

    python bench/run_all.py [extra arguments for each benchmark, e.g. --duration 5]

``make bench`` runs this after sourcing ``var/test-services.env``. Each benchmark
takes ``--database sqlite|postgresql`` (repeatable) and prints its own table;
PostgreSQL is skipped, with a note, when neither ``NEFOS_BENCH_POSTGRES_URL`` nor
``NEFOS_TEST_POSTGRES_URL`` is set (the first wins; the benchmarks get it as
``NEFOS_TEST_POSTGRES_URL``). ``bench_containers.py`` also needs the test Podman
(``NEFOS_TEST_DOCKER_HOST``) and ``bench_vms.py`` the test libvirtd
(``NEFOS_TEST_LIBVIRT_URI``); each says it skipped when that is missing.
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
    env = dict(os.environ)
    postgres = env.get("NEFOS_BENCH_POSTGRES_URL") or env.get("NEFOS_TEST_POSTGRES_URL")
    if postgres:
        backends.append("postgresql")
        env["NEFOS_TEST_POSTGRES_URL"] = postgres
    else:
        print(
            "NEFOS_BENCH_POSTGRES_URL / NEFOS_TEST_POSTGRES_URL not set: PostgreSQL skipped "
            "(run `make bench`)."
        )
    failed = []
    for script in sorted(BENCH_DIR.glob("bench_*.py")):
        print(f"\n=== {script.name} ({', '.join(backends)})", flush=True)
        args = [a for b in backends for a in ("--database", b)]
        try:
            done = subprocess.run(
                [sys.executable, str(script), *args, *argv], env=env, timeout=TIMEOUT, check=False
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
