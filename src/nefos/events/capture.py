"""Status changes of VMs, containers, hosts and operations, seen at flush, told at commit.

``install(db, sink)`` attaches three listeners to the database's own Session class:

* ``after_flush`` looks at what the flush wrote: a VM, container or host that was
  added, whose ``status`` changed, or that was deleted, and an operation that was
  added, becomes an event kept on the session (``nefos.events.record``);
* ``after_commit`` hands the session's events to ``sink`` (the bus);
* ``after_rollback`` drops them: what was rolled back never happened.

Changes made with bulk ``UPDATE`` statements are not seen here; the code issuing
them records its events itself (the operation queue does).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy import inspect
from sqlalchemy.orm import Session

from nefos.db.models import Container, Host, Operation, Vm
from nefos.db.session import Database
from nefos.events import PENDING_KEY, Event, EventType, make, record

Sink = Callable[[list[Event]], None]


def _status_change(obj: Any) -> tuple[str | None, str] | None:
    """(previous, current) status of a flushed object, None if it did not change."""
    history = inspect(obj).attrs.status.history
    if not history.added:
        return None
    previous = history.deleted[0] if history.deleted else None
    current = history.added[0]
    if previous == current:
        return None
    return previous, current


def vm_event(vm: Vm, previous: str | None, status: str) -> Event:
    return make(
        EventType.VM_STATUS,
        {
            "vm_id": vm.id,
            "name": vm.name,
            "status": status,
            "previous_status": previous,
            "host_id": vm.host_id,
            "reason": vm.status_reason,
        },
        project_id=vm.project_id,
    )


def container_event(container: Container, previous: str | None, status: str) -> Event:
    return make(
        EventType.CONTAINER_STATUS,
        {
            "container_id": container.id,
            "name": container.name,
            "status": status,
            "previous_status": previous,
            "replicas": container.replicas,
            "generation": container.generation,
            "reason": container.status_reason,
        },
        project_id=container.project_id,
    )


def host_event(host: Host, previous: str | None, status: str) -> Event:
    return make(
        EventType.HOST_STATUS,
        {
            "host_id": host.id,
            "hostname": host.hostname,
            "driver": host.driver,
            "status": status,
            "previous_status": previous,
            "reason": host.last_error,
        },
    )


def operation_event(
    *,
    op_id: str,
    kind: str,
    status: str,
    resource_type: str,
    resource_id: str,
    project_id: str | None,
    progress: int | None = None,
    error: dict[str, Any] | None = None,
) -> Event:
    return make(
        EventType.OPERATION,
        {
            "operation_id": op_id,
            "kind": kind,
            "status": status,
            "resource_type": resource_type,
            "resource_id": resource_id,
            "progress": progress,
            "error": error,
        },
        project_id=project_id,
    )


_MAKERS: dict[type[Any], Callable[[Any, str | None, str], Event]] = {
    Vm: vm_event,
    Container: container_event,
    Host: host_event,
}


def _after_flush(session: Session, _context: Any) -> None:
    for obj in session.new:
        maker = _MAKERS.get(type(obj))
        if maker is not None and obj.status is not None:
            record(session, maker(obj, None, obj.status))
        elif isinstance(obj, Operation):
            record(
                session,
                operation_event(
                    op_id=obj.id,
                    kind=obj.kind,
                    status=obj.status,
                    resource_type=obj.resource_type,
                    resource_id=obj.resource_id,
                    project_id=obj.project_id,
                    progress=obj.progress,
                ),
            )
    for obj in session.dirty:
        maker = _MAKERS.get(type(obj))
        if maker is None:
            continue
        change = _status_change(obj)
        if change is not None:
            record(session, maker(obj, change[0], change[1]))
    for obj in session.deleted:
        maker = _MAKERS.get(type(obj))
        if maker is not None:
            record(session, maker(obj, obj.status, "deleted"))


def install(db: Database, sink: Sink) -> None:
    """Capture ``db``'s status changes and hand them to ``sink`` at each commit."""
    cls = db.sync_session_class

    def after_commit(session: Session) -> None:
        pending = session.info.pop(PENDING_KEY, None)
        if pending:
            sink(pending)

    def after_rollback(session: Session) -> None:
        session.info.pop(PENDING_KEY, None)

    sa_event.listen(cls, "after_flush", _after_flush)
    sa_event.listen(cls, "after_commit", after_commit)
    sa_event.listen(cls, "after_rollback", after_rollback)
