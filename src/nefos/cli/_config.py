"""The CLI's config file: the server URL and the session's tokens.

``$NEFOS_CONFIG``, else ``~/.config/nefos/config.json`` (under
``$XDG_CONFIG_HOME`` when set). It holds credentials, so it is written
``0600`` (its directory ``0700``), atomically: a new file is written beside it
and renamed over it, so a crash never leaves half a file and a reader never
sees one. The password is never stored.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from nefos.sdk import Tokens


class ConfigError(Exception):
    """The config file exists but cannot be read as one."""


@dataclass
class Config:
    url: str | None = None
    access_token: str | None = None
    refresh_token: str | None = None
    user: str | None = None  # who logged in, for display only

    @property
    def has_session(self) -> bool:
        return bool(self.access_token or self.refresh_token)

    def with_tokens(self, tokens: Tokens | None) -> Config:
        if tokens is None:
            return Config(url=self.url)
        return Config(
            url=self.url,
            access_token=tokens.access_token,
            refresh_token=tokens.refresh_token,
            user=self.user,
        )


def config_path() -> Path:
    explicit = os.environ.get("NEFOS_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "nefos" / "config.json"


def load_config(path: Path | None = None) -> Config:
    path = path or config_path()
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Config()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        data: Any = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON; delete it and log in again") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a Nefos config file")
    known = {f.name for f in fields(Config)}
    return Config(**{k: v for k, v in data.items() if k in known and isinstance(v, str)})


def save_config(config: Config, path: Path | None = None) -> Path:
    """Write ``config`` with mode 0600, replacing the file atomically."""
    path = path or config_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    try:
        with os.fdopen(os.open(tmp, flags, 0o600), "w", encoding="utf-8") as f:
            # open()'s mode applies only to a new file: a stale one keeps its own.
            os.chmod(tmp, 0o600)
            json.dump({k: v for k, v in asdict(config).items() if v is not None}, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
