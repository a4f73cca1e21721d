"""Terminals over a WebSocket, blocking: ``client.containers.terminal(id)`` (a
command in a running replica, ``WS /containers/{id}/exec``) and
``client.vms.attach_console(id)`` (a running VM's serial console, ``WS
/vms/{id}/console``)::

    with client.containers.terminal(cid, command=["sh"]) as term:
        term.send(b"ls /\\n")
        while (chunk := term.recv(timeout=5)) is not None:
            print(chunk.decode(), end="")
    print(term.exit_code)

It authenticates with the client's credentials in a header (renewing the session
first when needed). A refusal before the terminal opens raises the API's error as
the REST calls do (``NotFoundError`` for another tenant's container or VM,
``ConflictError`` when no replica runs, the VM is stopped or its console is open
elsewhere, ...). A console has no exit code: it ends (``recv`` gives None) when the
VM stops or another client takes it over (``force=True``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlencode

from nefos.sdk._errors import _BY_CODE as BY_CODE
from nefos.sdk._errors import (
    ConflictError,
    NefosAPIError,
    TransportError,
)
from nefos.sdk._transport import Transport

#: Close codes the server uses, as the HTTP status they stand for.
_CLOSE_STATUS = {4401: 401, 4403: 403, 4404: 404, 4408: 408, 4409: 409, 4422: 422, 1009: 413}


class Terminal:
    """An open terminal (see the module docstring)."""

    def __init__(
        self,
        client: Transport,
        container_id: str | None = None,
        *,
        replica: int | None = None,
        command: Sequence[str] | None = None,
        cols: int = 80,
        rows: int = 24,
        open_timeout: float = 30.0,
        path: str | None = None,
        params: Sequence[tuple[str, Any]] | None = None,
    ) -> None:
        """A container's terminal (``container_id`` with ``replica``, ``command``, the
        size), or any terminal route: ``path`` and its ``params``."""
        if path is None:
            if container_id is None:
                raise TypeError("a container_id or a path")
            path = f"/containers/{quote(container_id, safe='')}/exec"
            query: list[tuple[str, Any]] = [("cols", cols), ("rows", rows)]
            if replica is not None:
                query.append(("replica", replica))
            query += [("command", arg) for arg in command or []]
        else:
            query = list(params or [])
        base = client.base_url
        scheme = "wss" if base.startswith("https://") else "ws"
        self.url = (
            scheme + base[base.index("://") :] + path + (f"?{urlencode(query)}" if query else "")
        )
        self._client = client
        self._open_timeout = open_timeout
        self._ws: Any = None
        #: The server's ``connected`` data: container_id, replica, command, cols, rows
        #: (a console: vm_id, forced).
        self.info: dict[str, Any] = {}
        #: The command's exit code once it ended (None before, or if it was hung up).
        self.exit_code: int | None = None
        self.closed = False

    # --- opening and closing ---------------------------------------------------------
    def __enter__(self) -> Terminal:
        from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
        from websockets.sync.client import connect

        headers, _ = self._client._credentials()
        try:
            self._ws = connect(
                self.url,
                additional_headers=headers,
                open_timeout=self._open_timeout,
                max_size=2**20,
            ).__enter__()  # a context manager's connection; closed by close()
            first = self._ws.recv(timeout=self._open_timeout)
        except InvalidStatus as exc:
            raise TransportError(f"WebSocket refused: HTTP {exc.response.status_code}") from exc
        except ConnectionClosed as exc:
            raise _closed(exc) from exc
        except (OSError, WebSocketException, TimeoutError) as exc:
            raise TransportError(f"WebSocket: {exc}") from exc
        message = json.loads(first)
        if message.get("type") == "error":
            self._ws.close()
            raise _refusal(message.get("data") or {})
        self.info = dict(message.get("data") or {})
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Hang up (the command's input ends)."""
        if self._ws is not None:
            self._ws.close()
        self.closed = True

    # --- talking -----------------------------------------------------------------------
    def send(self, data: bytes | str) -> None:
        """Type ``data`` (at most 64 KiB a message: longer input is sent in parts)."""
        raw = data.encode() if isinstance(data, str) else data
        for start in range(0, len(raw), 64 * 1024):
            self._ws.send(raw[start : start + 64 * 1024])

    def resize(self, cols: int, rows: int) -> None:
        self._ws.send(json.dumps({"type": "resize", "cols": cols, "rows": rows}))

    def recv(self, timeout: float | None = None) -> bytes | None:
        """The next output (waiting at most ``timeout`` seconds: ``b""`` if nothing
        came), or None once the terminal ended (then :attr:`exit_code` is set if the
        command exited; a console has none)."""
        from websockets.exceptions import ConnectionClosed

        while not self.closed:
            try:
                raw = self._ws.recv(timeout=timeout)
            except TimeoutError:
                return b""
            except ConnectionClosed as exc:
                self.closed = True
                code = exc.rcvd.code if exc.rcvd else None
                if code not in (1000, 1001, None):
                    raise _closed(exc) from exc
                return None
            if isinstance(raw, bytes):
                return raw
            message = json.loads(raw)
            if message.get("type") == "exit":
                self.exit_code = (message.get("data") or {}).get("code")
            elif message.get("type") == "error":
                error = _refusal(message.get("data") or {})
                if not isinstance(error, NefosAPIError) or error.code != "VALIDATION_ERROR":
                    self.closed = True
                    self._ws.close()
                    raise error
        return None


def _refusal(data: dict[str, Any]) -> NefosAPIError:
    code = str(data.get("code") or "CONFLICT")
    cls = BY_CODE.get(code, ConflictError)
    status = {
        "UNAUTHORIZED": 401,
        "FORBIDDEN": 403,
        "NOT_FOUND": 404,
        "VALIDATION_ERROR": 422,
        "TIMEOUT": 408,
    }.get(code, 409)
    details = data.get("details")
    return cls(
        status,
        code,
        str(data.get("message") or "refused"),
        dict(details) if isinstance(details, dict) else {},
    )


def _closed(exc: Any) -> NefosAPIError:
    code = exc.rcvd.code if exc.rcvd else None
    reason = (exc.rcvd.reason if exc.rcvd else "") or "The server closed the terminal"
    status = _CLOSE_STATUS.get(code or 0, 409)
    wire = {401: "UNAUTHORIZED", 403: "FORBIDDEN", 404: "NOT_FOUND", 422: "VALIDATION_ERROR"}
    name = wire.get(status, "CONFLICT")
    return BY_CODE.get(name, ConflictError)(status, name, reason)
