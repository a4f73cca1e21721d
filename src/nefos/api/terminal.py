"""Terminals over a WebSocket: ``WS /containers/{id}/exec`` (a command on a terminal
in one of the caller's running replicas: the Engine API's exec with a TTY,
``ComputeDriver.open_shell``, as Portainer's console and ``docker exec -it`` do) and
``WS /vms/{id}/console`` (a running VM's serial console, ``open_console``, as ``virsh
console`` and the Incus console do). One protocol serves both (:class:`Target`):

* **Handshake.** The credentials of ``WS /ws`` (a one-time ticket from
  ``POST /ws/ticket`` for a browser, a ``bearer.<token>`` subprotocol, a header) and
  its ``Origin`` rule. Query: ``replica`` (a slot; default the lowest running one),
  ``command`` (repeated, one argument each; default ``/bin/sh``), ``cols`` and
  ``rows`` (default 80 x 24); a VM's console takes ``force`` (true: take over the
  console another client has open, which then ends) and nothing else. The caller
  needs ``compute.write`` on the object's project; another tenant's is "not found".
* **Messages.** The server sends ``{"type": "connected", "data": {container_id,
  replica, command, cols, rows}}`` (a console: ``{vm_id, forced}``), then the
  terminal's output as binary messages, and at the end ``{"type": "exit", "data":
  {"code": N}}`` before closing (1000; a console's code is null: it ends when the VM
  stops or another console takes over). The
  client sends its keystrokes as binary messages (or text ``{"type": "input",
  "data": "..."}``), ``{"type": "resize", "cols": C, "rows": R}`` and ``{"type":
  "ping"}`` (answered ``pong``; a serial line has no size: a console ignores
  ``resize``). A malformed message gets an ``error`` and the terminal stays open.
* **Errors** before the terminal opens are an ``error`` message (the API's codes)
  and a close: 4401 credentials, 4403 scope, 4404 not found, 4409 anything else
  refused (no running replica or VM, a host without terminals, too many terminals,
  a console open elsewhere: ``details.console = "busy"``).
* **Bounds.** A message of at most 64 KiB; ``shell_max_per_user`` terminals per user
  or key in this process; hung up after ``shell_idle_timeout`` seconds without a
  byte either way (4408) or ``shell_max_seconds`` in all (4408); the credentials and
  the caller's access to the object are read again every
  ``ws_recheck_interval`` (a revoked session or a lost membership hangs up: 4401,
  4403, 4404). Hanging up ends the command's input (a shell exits).
* **Record.** Each terminal's opening and end is logged (who, which container and
  replica or VM, the command, how long, the exit code), never a credential or a byte of
  what was typed or shown.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import WebSocket, WebSocketDisconnect
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.websockets import WebSocketState

from nefos.api.deps import ID_PATTERN
from nefos.api.wsauth import (
    REQUIRED,
    accept,
    close_code,
    credential,
    error,
    message,
    origin_allowed,
    principal_of,
)
from nefos.domain.access import Permission
from nefos.domain.errors import Conflict, NefosError, NotFound, Unauthorized, ValidationFailed
from nefos.drivers.base import DriverError, Shell
from nefos.services.auth import AuthService, Grant
from nefos.services.containers import ContainerService
from nefos.services.core import Core
from nefos.services.principal import Principal
from nefos.services.vms import VmService

log = logging.getLogger("nefos.terminal")

MAX_MESSAGE = 64 * 1024
MAX_ARGS = 64
MAX_ARG = 4096
MAX_SIZE = 1000  # columns or rows
DEFAULT_COMMAND = ("/bin/sh",)
CLOSE_TIMEOUT = 4408
CLOSE_TOO_LARGE = 1009
#: Seconds a hang-up waits for a re-check under way to end.
CHECK_TIMEOUT = 10.0
#: Looks (0.1 s apart) for the exit code of a command whose output ended.
EXIT_POLLS = 30
#: Seconds a message may wait to be taken by a client that stopped reading: then the
#: terminal hangs up (a console's output is not held for it).
SEND_TIMEOUT = 30.0

_ID = re.compile(ID_PATTERN)
#: Terminals open in this process, by who opened them.
_open: Counter[str] = Counter()


@dataclass(frozen=True, slots=True)
class Request:
    replica: int | None
    command: tuple[str, ...]
    cols: int
    rows: int


def _int(ws: WebSocket, name: str, default: int | None, low: int, high: int) -> int | None:
    raw = ws.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ValidationFailed(
            f"'{name}' is a whole number from {low} to {high}", **{name: "out of range"}
        )
    return value


def _bool(ws: WebSocket, name: str) -> bool:
    raw = ws.query_params.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise ValidationFailed(f"'{name}' is true or false", **{name: "invalid"})
    return raw in ("true", "1")


def parse(ws: WebSocket) -> Request:
    """The handshake's query, checked (raises :class:`ValidationFailed`)."""
    command = tuple(ws.query_params.getlist("command")) or DEFAULT_COMMAND
    if len(command) > MAX_ARGS or any(
        not arg or len(arg) > MAX_ARG or "\x00" in arg for arg in command
    ):
        raise ValidationFailed(
            f"'command' is 1 to {MAX_ARGS} arguments, each 1 to {MAX_ARG} characters without NUL",
            command="invalid",
        )
    return Request(
        replica=_int(ws, "replica", None, 0, 1000),
        command=command,
        cols=_int(ws, "cols", 80, 1, MAX_SIZE) or 80,
        rows=_int(ws, "rows", 24, 1, MAX_SIZE) or 24,
    )


class Target(abc.ABC):
    """What a terminal attaches to: a container's replica (``exec``) or a VM's serial
    console. The handshake, the bounds, the re-checks and the record are shared."""

    #: In the record and in "not found": "container" or "VM".
    noun: str
    #: The detail naming the object in an error.
    id_field: str
    #: Whether the end has an exit code worth waiting a moment for.
    exits: bool

    def __init__(self, core: Core) -> None:
        self.core = core

    @property
    def title(self) -> str:
        """The noun at the start of a sentence."""
        return self.noun[:1].upper() + self.noun[1:]

    @abc.abstractmethod
    def parse(self, ws: WebSocket) -> Any:
        """The handshake's query, checked (raises :class:`ValidationFailed`)."""

    @abc.abstractmethod
    async def visible(self, session: AsyncSession, principal: Principal, object_id: str) -> Any:
        """The object, if the caller may use its terminals (else NotFound)."""

    @abc.abstractmethod
    async def open(
        self, session: AsyncSession, obj: Any, request: Any
    ) -> tuple[Shell, dict[str, Any]]:
        """The terminal and the data of the ``connected`` message."""


class ContainerExec(Target):
    """``WS /containers/{id}/exec``: a command on a terminal in a running replica."""

    noun = "container"
    id_field = "container_id"
    exits = True

    def parse(self, ws: WebSocket) -> Request:
        return parse(ws)

    async def visible(self, session: AsyncSession, principal: Principal, object_id: str) -> Any:
        return await ContainerService(self.core, session).visible(
            principal, object_id, Permission.COMPUTE_WRITE
        )

    async def open(
        self, session: AsyncSession, obj: Any, request: Request
    ) -> tuple[Shell, dict[str, Any]]:
        slot, shell = await ContainerService(self.core, session).open_shell(
            obj, slot=request.replica, command=request.command, cols=request.cols,
            rows=request.rows,
        )  # fmt: skip
        return shell, {
            "container_id": obj.id,
            "replica": slot,
            "command": list(request.command),
            "cols": request.cols,
            "rows": request.rows,
        }


class VmConsole(Target):
    """``WS /vms/{id}/console``: the running VM's serial console. Query ``force``
    (take over another open console, which ends)."""

    noun = "VM"
    id_field = "vm_id"
    exits = False

    def parse(self, ws: WebSocket) -> bool:
        return _bool(ws, "force")

    async def visible(self, session: AsyncSession, principal: Principal, object_id: str) -> Any:
        return await VmService(self.core, session).visible(
            principal, object_id, Permission.COMPUTE_WRITE
        )

    async def open(
        self, session: AsyncSession, obj: Any, request: bool
    ) -> tuple[Shell, dict[str, Any]]:
        shell = await VmService(self.core, session).open_console(obj, force=request)
        return shell, {"vm_id": obj.id, "forced": request}


def _who(principal: Principal) -> str:
    return f"key:{principal.api_key_id}" if principal.api_key_id else f"user:{principal.user_id}"


async def _check(core: Core, given: str | Grant, target: Target, object_id: str) -> Principal:
    """Who the credential is, if it may still use the object's terminals."""
    async with core.db.sessionmaker() as session:
        principal = await principal_of(AuthService(core, session), given)
        await target.visible(session, principal, object_id)
        await session.rollback()
    return principal


async def serve(ws: WebSocket, object_id: str, target: Target) -> None:
    """The route's body (see the module docstring)."""
    core: Core = ws.app.state.core
    if not origin_allowed(ws, core):
        await ws.close(code=1008)  # before accept: the upgrade is refused with 403
        return
    await accept(ws)
    settings = core.settings
    who = ""
    noun = target.noun
    try:
        if not _ID.fullmatch(object_id):
            raise NotFound(f"{target.title} not found", **{target.id_field: object_id[:64]})
        request = target.parse(ws)
        given = await credential(ws, core)
        if not given:
            raise Unauthorized(REQUIRED)
        principal = await _check(core, given, target, object_id)
        who = _who(principal)
        if _open[who] >= settings.shell_max_per_user:
            raise Conflict(
                f"At most {settings.shell_max_per_user} terminals may be open at once",
                limit=settings.shell_max_per_user,
            )
        _open[who] += 1
    except NefosError as exc:
        await _refuse(ws, exc)
        return
    opened: Shell | None = None
    try:
        async with core.db.sessionmaker() as session:
            obj = await target.visible(session, principal, object_id)
            opened, connected = await target.open(session, obj, request)
            await session.rollback()
    except BaseException as exc:
        _release(who)
        if opened is not None:  # the session's end failed, or a cancel came: hang up
            with contextlib.suppress(Exception):
                await asyncio.wait_for(opened.close(), SEND_TIMEOUT)
        if isinstance(exc, NefosError):
            await _refuse(ws, exc)
            return
        raise
    shell = opened
    started = time.monotonic()
    what = {k: v for k, v in connected.items() if k not in ("cols", "rows")}
    log.info("terminal opened: %s by %s, %s", noun, who, what)
    session_ = _Terminal(ws, core, shell, given, target, object_id)
    code: int | None = None
    try:
        await ws.send_text(message("connected", connected))
        code = await session_.run()
    finally:
        _release(who)
        await shell.close()
        log.info(
            "terminal closed: %s by %s after %.0f s, exit code %s (%s), %s",
            noun, who, time.monotonic() - started, code, session_.ended, what,
        )  # fmt: skip
        if ws.client_state is WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), SEND_TIMEOUT)


def _release(who: str) -> None:
    _open[who] -= 1
    if _open[who] <= 0:
        del _open[who]


async def _refuse(ws: WebSocket, exc: NefosError) -> None:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(SEND_TIMEOUT):
            await ws.send_text(error(exc.code, exc.message, **exc.details))
            await ws.close(code=close_code(exc), reason=exc.message[:120])


class _SlowClient(Exception):
    """The client took no message for SEND_TIMEOUT seconds."""


class _Terminal:
    """One open terminal: output out, keystrokes in, re-checks and deadlines."""

    def __init__(
        self,
        ws: WebSocket,
        core: Core,
        shell: Shell,
        given: str | Grant,
        target: Target,
        object_id: str,
    ) -> None:
        self.ws = ws
        self.core = core
        self.shell = shell
        self.given = given
        self.target = target
        self.object_id = object_id
        self.last = time.monotonic()
        self.ended = "open"
        self._send = asyncio.Lock()
        self._checking = False  # a re-check's query is under way
        self._ending = False

    async def send_text(self, text: str) -> None:
        try:
            async with asyncio.timeout(SEND_TIMEOUT), self._send:
                await self.ws.send_text(text)
        except TimeoutError as exc:
            raise _SlowClient from exc

    async def run(self) -> int | None:
        """Until the command ends (its exit code), the client leaves, or a bound or a
        re-check hangs up (None)."""
        tasks = {
            asyncio.create_task(self._output(), name="terminal-output"),
            asyncio.create_task(self._input(), name="terminal-input"),
            asyncio.create_task(self._watch(), name="terminal-watch"),
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._ending = True
            for task in tasks:
                # A re-check in the middle of its query ends on its own (soon): a
                # connection cancelled there is not given back to the pool cleanly.
                if task.get_name() == "terminal-watch" and self._checking:
                    with contextlib.suppress(Exception, asyncio.CancelledError):
                        await asyncio.wait_for(asyncio.shield(task), CHECK_TIMEOUT)
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        first = done.pop()
        exc = first.exception()
        if isinstance(exc, NefosError):
            self.ended = exc.code
            await _refuse(self.ws, exc)
            return None
        if isinstance(exc, _SlowClient):
            self.ended = "client too slow"
            return None
        if exc is not None and not isinstance(exc, (WebSocketDisconnect, DriverError)):
            raise exc
        if first.get_name() != "terminal-output":
            return None
        self.ended = "exited" if self.target.exits else "ended"
        code = await self.shell.exit_code()
        for _ in range(EXIT_POLLS if self.target.exits else 0):
            # the engine may say "running" a moment longer
            if code is not None:
                break
            await asyncio.sleep(0.1)
            code = await self.shell.exit_code()
        with contextlib.suppress(Exception):
            await self.send_text(message("exit", {"code": code}))
            await asyncio.wait_for(self.ws.close(code=1000), SEND_TIMEOUT)
        return code

    async def _output(self) -> None:
        while data := await self.shell.read():
            self.last = time.monotonic()
            try:
                async with asyncio.timeout(SEND_TIMEOUT), self._send:
                    await self.ws.send_bytes(data)
            except TimeoutError as exc:
                raise _SlowClient from exc

    async def _input(self) -> None:
        while True:
            msg = await self.ws.receive()
            if msg["type"] == "websocket.disconnect":
                self.ended = "client left"
                return
            data: bytes | None = msg.get("bytes")
            text: str | None = msg.get("text")
            size = len(data) if data is not None else len(text or "")
            if size > MAX_MESSAGE:
                self.ended = "message too large"
                with contextlib.suppress(Exception):
                    await self.send_text(error("VALIDATION_ERROR", "Message too large"))
                    await asyncio.wait_for(self.ws.close(code=CLOSE_TOO_LARGE), SEND_TIMEOUT)
                return
            self.last = time.monotonic()
            if data is not None:
                await self.shell.write(data)
            elif text is not None:
                answer = await self._control(text)
                if answer:
                    await self.send_text(answer)

    async def _control(self, raw: str) -> str | None:
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            msg = None
        if not isinstance(msg, dict):
            return error("VALIDATION_ERROR", "Text messages are JSON objects")
        kind = msg.get("type")
        if kind == "input" and isinstance(msg.get("data"), str):
            await self.shell.write(msg["data"].encode())
            return None
        if kind == "resize":
            cols, rows = msg.get("cols"), msg.get("rows")
            if not all(
                isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_SIZE
                for v in (cols, rows)
            ):
                return error(
                    "VALIDATION_ERROR", f"'cols' and 'rows' are whole numbers from 1 to {MAX_SIZE}"
                )
            assert isinstance(cols, int) and isinstance(rows, int)
            await self.shell.resize(cols, rows)
            return None
        if kind == "ping":
            return message("pong", {})
        return error(
            "VALIDATION_ERROR",
            'Send bytes, {"type": "input", "data": "..."}, {"type": "resize", "cols": C, '
            '"rows": R} or {"type": "ping"}',
        )

    async def _watch(self) -> None:
        """Hang up on a bound or a failed re-check."""
        settings = self.core.settings
        ends = time.monotonic() + settings.shell_max_seconds
        checked = time.monotonic()
        while True:
            now = time.monotonic()
            idle_until = self.last + settings.shell_idle_timeout
            next_check = checked + settings.ws_recheck_interval
            await asyncio.sleep(max(0.05, min(idle_until, ends, next_check) - now))
            now = time.monotonic()
            if now >= ends or now >= self.last + settings.shell_idle_timeout:
                self.ended = "timed out"
                why = "open too long" if now >= ends else "idle too long"
                with contextlib.suppress(Exception):
                    await self.send_text(error("TIMEOUT", f"The terminal was {why}"))
                    await asyncio.wait_for(
                        self.ws.close(code=CLOSE_TIMEOUT, reason=f"terminal {why}"), SEND_TIMEOUT
                    )
                return
            if now >= next_check:
                checked = now
                self._checking = True
                try:
                    await _check(self.core, self.given, self.target, self.object_id)
                except NefosError:
                    raise  # revoked, lost access: hang up
                except Exception:  # the database is away: keep the terminal, look again
                    log.warning("could not re-check a terminal's credentials", exc_info=True)
                finally:
                    self._checking = False
                if self._ending:
                    return
