"""The NoCloud seed: the disk (iso9660, volume label ``cidata``) that hands a guest
its instance id, hostname, SSH keys and user data, as cloud-init reads it.

``meta-data`` is YAML in a deliberately plain form (one key a line, strings
double-quoted as JSON quotes them, keys under ``public-keys:`` one per ``  - ``
line) so that a guest without cloud-init (the tiny test image's busybox init)
can read it with sed, and cloud-init reads it as usual.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

LABEL = "cidata"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HOSTNAME_BAD = re.compile(r"[^a-z0-9-]+")


class SeedError(Exception):
    """The seed cannot be made (no ISO tool on this machine, or it failed)."""


def hostname_for(name: str, fallback: str) -> str:
    """An RFC 1123 host label from a display name (``fallback`` if nothing is left)."""
    label = _HOSTNAME_BAD.sub("-", name.lower()).strip("-")[:63].strip("-")
    return label or fallback


def meta_data(*, instance_id: str, hostname: str, ssh_keys: Sequence[str]) -> str:
    lines = [
        f"instance-id: {json.dumps(instance_id)}",
        f"local-hostname: {json.dumps(hostname)}",
    ]
    if ssh_keys:
        lines.append("public-keys:")
        lines += [f"  - {json.dumps(key)}" for key in ssh_keys]
    return "\n".join(lines) + "\n"


def command_script(command: Sequence[str], env: Mapping[str, str]) -> str:
    """A shell-script user data that exports ``env`` and runs ``command``: how a VM
    takes a spec's command (cloud-init runs a ``#!`` user data as a script)."""
    bad = [k for k in env if not _ENV_NAME.fullmatch(k)]
    if bad:
        raise ValueError(f"not a shell variable name: {', '.join(sorted(bad))}")
    lines = ["#!/bin/sh"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())]
    lines.append(shlex.join(command))
    return "\n".join(lines) + "\n"


def iso_tool() -> list[str] | None:
    """The command that writes an ISO image on this machine, if any is installed."""
    for name in ("genisoimage", "mkisofs"):
        path = shutil.which(name)
        if path:
            return [path]
    xorriso = shutil.which("xorriso")
    return [xorriso, "-as", "mkisofs"] if xorriso else None


def build_iso(files: Mapping[str, str], *, label: str = LABEL, timeout: float = 60) -> bytes:
    """An iso9660 image (Rock Ridge + Joliet, so names keep their case and dashes)."""
    tool = iso_tool()
    if tool is None:
        raise SeedError("no ISO writer on this machine: install genisoimage (or xorriso)")
    with tempfile.TemporaryDirectory(prefix="nefos-seed-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        for name, content in files.items():
            (root / name).write_text(content, encoding="utf-8")
        out = Path(tmp) / "seed.iso"
        argv = [*tool, "-quiet", "-output", str(out), "-volid", label, "-joliet", "-rock"]
        argv += [str(root / name) for name in sorted(files)]
        try:
            # A fixed tool path and argv of our own: no shell, no user input in argv.
            subprocess.run(argv, check=True, capture_output=True, timeout=timeout)  # noqa: S603
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            raise SeedError(
                f"{tool[0]} failed: {exc} {detail.decode(errors='replace').strip()}"
            ) from exc
        return out.read_bytes()
