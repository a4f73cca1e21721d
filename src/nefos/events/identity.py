"""Commits that change who a caller is, seen as they happen.

``install(db, sink)`` attaches listeners to the database's own Session class. A
commit that wrote a user, an auth session, an API key or a membership hands
``sink`` the ids of the users concerned; one that deleted an organisation or
changed its parent, or made one under another (an API key bound to it may lose its
reach; the organisations a cached caller sees change), or that ran a bulk
``UPDATE``/``DELETE`` on any of those tables (rows it cannot name), hands it
``ALL``. The sink is the principal cache's invalidation (``nefos.services.authn``).

A statement that changes nothing a principal holds (an API key's ``last_used_at``)
says so with the execution option ``KEEPS_PRINCIPALS``. What was rolled back never
happened and is dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy import inspect
from sqlalchemy.orm import ORMExecuteState, Session

from nefos.db.models import ApiKey, AuthSession, Membership, Organisation, User
from nefos.db.session import Database

#: Every user (a change whose users cannot be named).
ALL = "all"
#: Execution option of a statement that changes nothing a principal holds.
KEEPS_PRINCIPALS = "nefos_keeps_principals"

_PENDING = "nefos.identity.users"
_WATCHED = (User, AuthSession, ApiKey, Membership, Organisation)

Sink = Callable[[set[str] | str], None]


def _note(session: Session, users: set[str] | str) -> None:
    pending = session.info.get(_PENDING)
    if pending == ALL or users == ALL:
        session.info[_PENDING] = ALL
    else:
        session.info.setdefault(_PENDING, set()).update(users)


def _users_of(session: Session) -> set[str] | str:
    users: set[str] = set()
    for obj in (*session.new, *session.dirty, *session.deleted):
        if isinstance(obj, User):
            users.add(obj.id)
        elif isinstance(obj, AuthSession | ApiKey | Membership):
            users.add(obj.user_id)
        elif isinstance(obj, Organisation) and (
            obj in session.deleted
            or (obj.parent_id is not None if obj in session.new else _moved(obj))
        ):
            return ALL  # who sees which organisation changed
    return users


def _moved(org: Organisation) -> bool:
    return bool(inspect(org).attrs.parent_id.history.has_changes())


def install(db: Database, sink: Sink) -> None:
    cls = db.sync_session_class

    @sa_event.listens_for(cls, "after_flush")
    def after_flush(session: Session, _context: Any) -> None:
        users = _users_of(session)
        if users:
            _note(session, users)

    @sa_event.listens_for(cls, "do_orm_execute")
    def on_execute(state: ORMExecuteState) -> None:
        if not (state.is_update or state.is_delete):
            return
        if state.execution_options.get(KEEPS_PRINCIPALS):
            return
        if any(m.class_ in _WATCHED for m in state.all_mappers):
            _note(state.session, ALL)

    @sa_event.listens_for(cls, "after_commit")
    def after_commit(session: Session) -> None:
        users = session.info.pop(_PENDING, None)
        if users:
            sink(users)

    @sa_event.listens_for(cls, "after_rollback")
    def after_rollback(session: Session) -> None:
        session.info.pop(_PENDING, None)
