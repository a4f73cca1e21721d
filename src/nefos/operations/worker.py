"""Workers: claim operations, run their handlers, record the outcome.

A handler is registered per operation ``kind``. It gets an ``OpContext`` and does
the work, writing the resource's state itself; the worker records the operation's
end. Handlers must be idempotent: an operation interrupted by a crash runs again
from the start (after its lease expires), so each step checks what already exists.

* The handler returns: the operation succeeds with the returned result.
* It raises ``Retry`` (the services layer raises it when a host is unreachable):
  the operation goes back to pending and runs again after a back-off, until
  ``operation_retry_deadline`` has passed since it was created; then it fails.
* It raises anything else: the operation fails with the error's code and message
  (and a ``NefosError``'s ``result``, e.g. ``rolled_back``), and the handler's
  ``on_failure`` hook runs to put the resource in ``error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from nefos.db.models import Operation
from nefos.db.session import Database
from nefos.db.types import utcnow
from nefos.domain.errors import NefosError
from nefos.operations import queue
from nefos.operations.queue import OpStatus, OpView, Wakeup

log = logging.getLogger("nefos.operations")


class Retry(Exception):
    """Run the operation again later (a host is unreachable, a lock is held)."""

    def __init__(
        self, reason: str, *, code: str = "SERVICE_UNAVAILABLE", engine_message: str | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason  # told to the operation's owner
        self.code = code
        self.engine_message = engine_message  # platform admins only


@dataclass
class OpContext:
    op: OpView
    db: Database
    worker: str
    _progress: int | None = None

    def progress(self, percent: int) -> None:
        self._progress = max(0, min(99, percent))


Run = Callable[[OpContext], Awaitable[dict[str, Any] | None]]
OnFailure = Callable[[OpContext, str, str], Awaitable[None]]
#: Undo a pending operation's effects on its resource, in the cancelling transaction.
OnCancel = Callable[[AsyncSession, Operation], Awaitable[None]]


@dataclass
class Handler:
    run: Run
    on_failure: OnFailure | None = None
    on_cancel: OnCancel | None = None


@dataclass
class Workers:
    """The operation handlers and the worker tasks of this process."""

    db: Database
    concurrency: int = 4
    poll_interval: float = 1.0
    lease: float = 60.0
    retry_deadline: float = 600.0
    handlers: dict[str, Handler] = field(default_factory=dict)
    wakeup: Wakeup = field(default_factory=Wakeup)
    name: str = field(
        default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    )
    #: Called after any operation fails (after its own ``on_failure``): what other
    #: records follow an operation's outcome (a quote its resources' creates).
    failure_listeners: list[OnFailure] = field(default_factory=list)
    #: Tells the other processes' workers that work was committed (the composition
    #: root sets it: a control message on the event bus). Without it they find the
    #: work on their next poll.
    broadcast: Callable[[], None] | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stopping: bool = False
    _broadcasting: bool = False

    def register(
        self,
        kind: str,
        run: Run,
        on_failure: OnFailure | None = None,
        on_cancel: OnCancel | None = None,
    ) -> None:
        self.handlers[kind] = Handler(run, on_failure, on_cancel)

    def start(self) -> None:
        self._stopping = False
        for i in range(self.concurrency):
            self._tasks.append(asyncio.create_task(self._loop(f"{self.name}/{i}")))

    async def stop(self) -> None:
        self._stopping = True
        self.wakeup.notify()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []

    @property
    def running(self) -> bool:
        """Some worker task of this process is alive."""
        return any(not t.done() for t in self._tasks)

    def notify(self) -> None:
        """Work was committed: wake this process's workers and, once per turn of the
        event loop however many commits call this, the other processes'."""
        self.wakeup.notify()
        if self.broadcast is not None and not self._broadcasting:
            self._broadcasting = True
            try:
                asyncio.get_running_loop().call_soon(self._send_broadcast)
            except RuntimeError:  # no loop (a synchronous caller): at once
                self._send_broadcast()

    def _send_broadcast(self) -> None:
        self._broadcasting = False
        if self.broadcast is not None:
            try:
                self.broadcast()
            except Exception:  # the others find the work on their poll
                log.warning("could not wake the other processes' workers", exc_info=True)

    def woken(self) -> None:
        """Another process committed work: wake ours (and tell no one else)."""
        self.wakeup.notify()

    async def _loop(self, worker: str) -> None:
        while not self._stopping:
            try:
                ran = await self.run_one(worker)
            except asyncio.CancelledError:
                raise
            except Exception:  # the database went away: log, back off, go on
                log.exception("operation worker %s failed to claim", worker)
                ran = False
                await asyncio.sleep(self.poll_interval)
            if not ran:
                await self.wakeup.wait(self.poll_interval)

    async def run_one(self, worker: str | None = None) -> bool:
        """Claim and run one operation; False when none was runnable."""
        worker = worker or f"{self.name}/direct"
        async with self.db.sessionmaker() as session:
            op = await queue.claim(session, worker)
        if op is None:
            return False
        await self._run(op, worker)
        return True

    async def _run(self, op: OpView, worker: str) -> None:
        ctx = OpContext(op=op, db=self.db, worker=worker)
        handler = self.handlers.get(op.kind)
        beat = asyncio.create_task(self._heartbeat(ctx))
        status, result, code, message = OpStatus.SUCCEEDED, None, None, None
        engine_message: str | None = None
        retry: Retry | None = None
        try:
            if handler is None:
                raise NefosError(f"No handler for operation kind {op.kind!r}")
            result = await handler.run(ctx)
        except Retry as exc:
            if utcnow() < op.created_at + timedelta(seconds=self.retry_deadline):
                retry = exc
            else:
                status, code, message = OpStatus.FAILED, exc.code, exc.reason
                engine_message = exc.engine_message
        except NefosError as exc:
            status, code, message = OpStatus.FAILED, exc.code, exc.message
            engine_message = exc.engine_message
            result = exc.result
        except Exception as exc:
            log.exception("operation %s (%s) crashed", op.id, op.kind)
            status, code, message = OpStatus.FAILED, "INTERNAL_ERROR", f"{type(exc).__name__}"
        finally:
            # The heartbeat ends before anything else is written, and, when this task
            # is cancelled (shutting down: the lease runs out and the operation runs
            # again), before the task ends: its session must close before the
            # database does.
            beat.cancel()
            await asyncio.wait([beat])
        if retry is not None:
            delay = min(30.0, 0.5 * 2 ** min(op.attempts, 6))
            log.info("operation %s (%s) retries in %.1fs: %s", op.id, op.kind, delay, retry)
            async with self.db.sessionmaker() as session:
                await queue.retry_later(
                    session,
                    op.id,
                    worker,
                    delay=delay,
                    reason=retry.reason,
                    engine_message=retry.engine_message,
                )
            return
        if status is OpStatus.FAILED and handler is not None and handler.on_failure is not None:
            # Only while the operation is still ours: after a lost lease another
            # worker runs it, and this one's verdict must not touch the resource.
            async with self.db.sessionmaker() as session:
                still_ours = await queue.heartbeat(session, op.id, worker, None)
            if not still_ours:
                log.warning("operation %s was taken over; not recording its failure", op.id)
                return
            try:
                await handler.on_failure(ctx, code or "INTERNAL_ERROR", message or "")
            except Exception:
                log.exception("on_failure of operation %s failed", op.id)
            for listener in self.failure_listeners:
                try:
                    await listener(ctx, code or "INTERNAL_ERROR", message or "")
                except Exception:
                    log.exception("a failure listener of operation %s failed", op.id)
        async with self.db.sessionmaker() as session:
            await queue.finish(
                session,
                op.id,
                worker,
                status=status,
                result=result,
                error_code=code,
                error_message=message,
                engine_message=engine_message,
            )

    async def _heartbeat(self, ctx: OpContext) -> None:
        interval = max(0.2, self.lease / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                async with self.db.sessionmaker() as session:
                    await queue.heartbeat(session, ctx.op.id, ctx.worker, ctx._progress)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("heartbeat of operation %s failed", ctx.op.id, exc_info=True)
