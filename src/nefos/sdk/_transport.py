"""What the resource namespaces use of the client: its requests and its session.

The namespaces (``client.vms``, ``client.billing``, ...) are made by ``Client`` and
typed against this protocol, not against ``Client``, so no module of the SDK
imports the one that imports it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, Any, Protocol

import httpx

from nefos.schemas.identity import AuthResult


class Transport(Protocol):
    @property
    def base_url(self) -> str: ...
    @property
    def refresh_token(self) -> str | None: ...
    @property
    def _http(self) -> httpx.Client: ...

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        data: dict[str, str] | None = None,
        files: dict[str, tuple[str, IO[bytes]]] | None = None,
        authenticated: bool = True,
        raw: bool = False,
    ) -> Any: ...

    def stream(self, path: str, params: dict[str, Any], seconds: float) -> Iterator[str]: ...
    def _credentials(self) -> tuple[dict[str, str], str | None]: ...
    def _adopt(self, result: AuthResult) -> None: ...
    def _remember_login(
        self, *, email: str | None, username: str | None, password: str | None
    ) -> None: ...
    def _forget_session(self) -> None: ...
