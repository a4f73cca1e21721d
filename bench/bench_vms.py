"""Create-to-booted latency of a VM: Nefos's API against a raw ``virsh create`` of an
equivalent domain, same libvirtd, same run.

    python bench/bench_vms.py [--database sqlite] [--database postgresql]
                              [--count 10] [--warmup 1] [--poll 0.05] [--json out.json]

Needs the test libvirtd (``make services``; ``NEFOS_TEST_LIBVIRT_URI`` in
``var/test-services.env``) and the tiny image ``var/images/nefos-tiny`` (Debian's
kernel and a busybox initramfs whose init prints ``NEFOS-BOOT`` as its first line
on the serial console). Without them it says so and exits 0. For each backend it

1. starts Nefos (``bench/serve.py nefos``, one worker process, the default 4
   operation workers, ``NEFOS_LIBVIRT_DOMAIN_TYPE`` as set, else ``qemu``) on a
   fresh database, registers the libvirtd as a host and the tiny image (as the
   admin), and a user;
2. boots ``--count`` VMs two ways, one at a time, alternating which goes first
   (after ``--warmup`` uncounted rounds), each 1 vCPU and 128 MiB, no root disk:

   - **Nefos**: ``POST /api/v1/vms``, then ``GET /vms/{id}/console`` every
     ``--poll`` seconds until the guest's first line (``NEFOS-BOOT``) is there;
     timed from just before the POST;
   - **virsh create** (the baseline): the domain XML Nefos made for its first VM,
     renamed, its UUID and metadata dropped, its console log and seed copied to
     files of the run; ``virsh -c URI create FILE`` then the console log file read
     every ``--poll`` seconds until ``NEFOS-BOOT``; timed from just before virsh.

3. deletes Nefos's VMs through the API and destroys the raw domains (transient:
   they vanish) and their files.

It prints p50 and p95 (nearest rank) per way and the ratio Nefos / virsh.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_api import machine, nefos_env, server
from bench_containers import Samples, database, postgres_admin_url

ROOT = Path(__file__).resolve().parent.parent
AIM = 1.10  # Nefos / raw virsh create, p50, at most
WAIT = 120.0  # seconds one VM may take to boot
MARK = "NEFOS-BOOT"
ADMIN_PASSWORD = "bench-admin-password-123"
PASSWORD = "bench-password-123"


def libvirt_uri() -> str | None:
    return os.environ.get("NEFOS_TEST_LIBVIRT_URI")


def tiny_image() -> Path:
    return Path(os.environ.get("NEFOS_TEST_VM_IMAGE") or ROOT / "var" / "images" / "nefos-tiny")


class Nefos:
    def __init__(self, base: str, uri: str, poll: float) -> None:
        self.client = httpx.Client(base_url=base, timeout=60.0)
        self.uri = uri
        self.poll = poll
        self.auth: dict[str, str] = {}
        self.image_id = ""
        self.vms: list[str] = []
        self.booted = Samples("Nefos: POST to first console line")
        self.accepted = Samples("Nefos: POST answered (202)")

    def _wait(self, url: str, headers: dict[str, str]) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT
        while True:
            op: dict[str, Any] = self.client.get(url, headers=headers).json()["data"]
            if op["status"] not in ("pending", "running"):
                return op
            if time.monotonic() > deadline:
                raise RuntimeError(f"operation not done in {WAIT:g}s: {op}")
            time.sleep(0.1)

    def set_up(self) -> None:
        r = self.client.post(
            "/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}
        )
        r.raise_for_status()
        admin = {"Authorization": f"Bearer {r.json()['data']['access_token']}"}
        r = self.client.post(
            "/api/v1/resources/hosts",
            json={"hostname": "libvirt-bench", "driver": "libvirt", "uri": self.uri},
            headers=admin,
        )
        r.raise_for_status()
        if r.json()["data"]["status"] != "active":
            raise RuntimeError(f"the libvirt host is not active: {r.text}")
        r = self.client.post(
            "/api/v1/images",
            json={"name": "tiny", "os_type": "busybox", "path": str(tiny_image())},
            headers=admin,
        )
        r.raise_for_status()
        data = r.json()["data"]
        op = self._wait(data["operation"]["url"], admin)
        if op["status"] != "succeeded":
            raise RuntimeError(f"image import failed: {op}")
        self.image_id = data["image_id"]
        self.admin = admin
        r = self.client.post(
            "/api/v1/auth/register",
            json={"email": "bench-vm@example.com", "password": PASSWORD, "name": "Bench"},
        )
        r.raise_for_status()
        self.auth = {"Authorization": f"Bearer {r.json()['data']['access_token']}"}

    def boot(self, name: str, *, record: bool) -> str:
        body = {"name": name, "image_id": self.image_id, "memory_mb": 128, "storage_gb": 0}
        t0 = time.perf_counter()
        r = self.client.post("/api/v1/vms", json=body, headers=self.auth)
        accepted = time.perf_counter() - t0
        if r.status_code != 202:
            raise RuntimeError(f"POST /vms: {r.status_code} {r.text}")
        vm_id = r.json()["data"]["vm_id"]
        self.vms.append(vm_id)
        deadline = t0 + WAIT
        while True:
            g = self.client.get(f"/api/v1/vms/{vm_id}/console?tail=20", headers=self.auth)
            if g.status_code == 200 and MARK in g.json()["data"]["console"]:
                booted = time.perf_counter() - t0
                break
            if time.perf_counter() > deadline:
                raise RuntimeError(f"VM {name} did not boot in {WAIT:g}s: {g.text}")
            time.sleep(self.poll)
        if record:
            self.booted.values.append(booted)
            self.accepted.values.append(accepted)
        return vm_id

    def remove(self, vm_id: str) -> None:
        """Delete one VM and wait (the host has room for a few VMs at a time)."""
        r = self.client.delete(f"/api/v1/vms/{vm_id}", headers=self.auth)
        r.raise_for_status()
        self._wait(r.json()["data"]["operation"]["url"], self.auth)
        self.vms.remove(vm_id)

    def clean_up(self) -> None:
        ops = []
        for vm_id in self.vms:
            r = self.client.delete(f"/api/v1/vms/{vm_id}", headers=self.auth)
            if r.status_code == 202:
                ops.append(r.json()["data"]["operation"]["url"])
        for url in ops:
            self._wait(url, self.auth)
        if self.image_id:
            r = self.client.delete(f"/api/v1/images/{self.image_id}", headers=self.admin)
            if r.status_code == 202:
                self._wait(r.json()["data"]["operation"]["url"], self.admin)
        self.client.close()


class Raw:
    """``virsh create`` of the domain Nefos made, as a transient domain of the run."""

    def __init__(self, uri: str, run_id: str, template: str, tmp: Path, poll: float) -> None:
        self.uri = uri
        self.run_id = run_id
        self.poll = poll
        self.dir = Path("/var/lib/libvirt/images") / f"nefos-bench-{run_id}"
        self.dir.mkdir(parents=True, exist_ok=True)
        seed = re.search(r"<source file='([^']+\.seed\.iso)'", template)
        if seed is None:
            raise RuntimeError("the template domain has no seed disk")
        shutil.copyfile(seed.group(1), self.dir / "seed.iso")
        xml = re.sub(r"<uuid>[^<]*</uuid>", "", template)
        xml = re.sub(r"<metadata>.*?</metadata>", "", xml, flags=re.S)
        xml = xml.replace(seed.group(1), str(self.dir / "seed.iso"))
        self.template = xml
        self.tmp = tmp
        self.booted = Samples("virsh create: to first console line")
        self.names: list[str] = []

    def boot(self, name: str, *, record: bool) -> None:
        log = self.dir / f"{name}.console.log"
        xml = re.sub(r"<name>[^<]*</name>", f"<name>{name}</name>", self.template, count=1)
        xml = re.sub(r"(<log file=')[^']*'", rf"\g<1>{log}'", xml)
        path = self.tmp / f"{name}.xml"
        path.write_text(xml)
        t0 = time.perf_counter()
        subprocess.run(
            ["virsh", "-q", "-c", self.uri, "create", str(path)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        self.names.append(name)
        deadline = t0 + WAIT
        while True:
            if log.exists() and MARK in log.read_text(errors="replace"):
                booted = time.perf_counter() - t0
                break
            if time.perf_counter() > deadline:
                raise RuntimeError(f"raw domain {name} did not boot in {WAIT:g}s")
            time.sleep(self.poll)
        subprocess.run(
            ["virsh", "-q", "-c", self.uri, "destroy", name],
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if record:
            self.booted.values.append(booted)

    def clean_up(self) -> None:
        for name in self.names:
            subprocess.run(
                ["virsh", "-q", "-c", self.uri, "destroy", name],
                check=False,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        shutil.rmtree(self.dir, ignore_errors=True)


def domain_xml(uri: str, vm_id: str) -> str:
    import libvirt

    conn = libvirt.open(uri)
    try:
        return str(conn.lookupByName(f"nefos-{vm_id}").XMLDesc(0))
    finally:
        conn.close()


@dataclass
class Row:
    backend: str
    samples: list[Samples]
    load: tuple[float, float]
    domain_type: str = ""
    notes: list[str] = field(default_factory=list)


def bench_backend(backend: str, uri: str, *, count: int, warmup: int, poll: float) -> Row:
    run_id = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix=f"nefos-bench-vms-{backend}-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "data").mkdir()
        with database(backend, tmp) as db_url:
            env = nefos_env(db_url, tmp / "data")
            env.update(
                NEFOS_REGISTER_LOCAL_HOSTS="false",
                NEFOS_ADMIN_PASSWORD=ADMIN_PASSWORD,
                NEFOS_LIBVIRT_DOMAIN_TYPE=os.environ.get("NEFOS_LIBVIRT_DOMAIN_TYPE", "qemu"),
            )
            with server(
                ["nefos"], env=env, cwd=tmp, log=tmp / "nefos.log", ready_path="/health"
            ) as (base, _pid):
                nefos = Nefos(base, uri, poll)
                raw: Raw | None = None
                load0 = os.getloadavg()[0]
                try:
                    nefos.set_up()
                    first = nefos.boot(f"bench-{run_id}-template", record=False)
                    template = domain_xml(uri, first)
                    kind = re.search(r"<domain type='(\w+)'", template)
                    raw = Raw(uri, run_id, template, tmp, poll)
                    print(f"[{backend}] Nefos on {base}; libvirt {uri}", flush=True)
                    for i in range(warmup + count):
                        record = i >= warmup
                        names = [f"bench-{run_id}-n-{i:02d}", f"bench-{run_id}-raw-{i:02d}"]
                        order = (0, 1) if i % 2 == 0 else (1, 0)
                        for k in order:
                            if k == 0:
                                nefos.remove(nefos.boot(names[0], record=record))
                            else:
                                raw.boot(names[1], record=record)
                        if record:
                            print(
                                f"[{backend}] {i - warmup + 1}/{count}: nefos "
                                f"{nefos.booted.values[-1] * 1e3:.0f} ms, virsh create "
                                f"{raw.booted.values[-1] * 1e3:.0f} ms",
                                flush=True,
                            )
                    load1 = os.getloadavg()[0]
                finally:
                    nefos.clean_up()
                    if raw is not None:
                        raw.clean_up()
    samples = [nefos.booted, nefos.accepted]
    if raw is not None:
        samples.append(raw.booted)
    return Row(backend, samples, (load0, load1), kind.group(1) if kind else "?")


def report(rows: list[Row]) -> None:
    print()
    print("| backend | domain | way | n | p50 ms | p95 ms | p50 / virsh | p95 / virsh |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        base = row.samples[-1]
        for s in row.samples:
            print(
                f"| {row.backend} | {row.domain_type} | {s.name} | {len(s.values)} "
                f"| {s.pct(0.5):,.0f} | {s.pct(0.95):,.0f} "
                f"| {s.pct(0.5) / base.pct(0.5):.2f} | {s.pct(0.95) / base.pct(0.95):.2f} |"
            )
    print(f"\nNearest-rank percentiles. Aim: Nefos / virsh create, p50, <= {AIM}.")
    for row in rows:
        n, base = row.samples[0], row.samples[-1]
        ratio = n.pct(0.5) / base.pct(0.5)
        print(
            f"{row.backend}: Nefos / virsh create = {ratio:.2f} (p50): aim "
            f"{'met' if ratio <= AIM else 'NOT met'}; load average {row.load[0]:.2f} "
            f"before, {row.load[1]:.2f} after"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument(
        "--database", action="append", choices=["sqlite", "postgresql"],
        help="Backend (repeatable). Default: sqlite, and postgresql when configured.",
    )  # fmt: skip
    parser.add_argument("--count", type=int, default=10, help="VMs per way, measured.")
    parser.add_argument("--warmup", type=int, default=1, help="Uncounted rounds first.")
    parser.add_argument("--poll", type=float, default=0.05, help="Seconds between polls.")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args, ignored = parser.parse_known_args(argv)
    if ignored:
        print(f"ignoring {' '.join(ignored)}: this benchmark has no such option")
    if not (1 <= args.count <= 20 and 0 <= args.warmup <= 5):
        parser.error("count 1-20, warmup 0-5")
    uri = libvirt_uri()
    if not uri or not (tiny_image() / "vmlinuz").is_file() or not shutil.which("virsh"):
        print("NEFOS_TEST_LIBVIRT_URI, virsh or var/images/nefos-tiny is missing (run "
              "`make services` and source var/test-services.env): bench_vms skipped.")  # fmt: skip
        return 0
    backends = args.database or ["sqlite"] + (["postgresql"] if postgres_admin_url() else [])
    print(machine())
    rows = [
        bench_backend(b, uri, count=args.count, warmup=args.warmup, poll=args.poll)
        for b in backends
    ]
    report(rows)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
