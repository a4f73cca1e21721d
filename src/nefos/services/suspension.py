"""Suspension: stop (never delete) what an organisation runs, as the system.

The billing pass decides *when* an organisation is suspended (its wallet ran dry
and the grace period is over); this is *what* suspension does. The composition
root builds it with :func:`suspender` and hands it to the billing engine, so
billing never imports a service. The stops are the system's
(:data:`~nefos.domain.actors.BILLING_SUSPENSION`): their operations have no user
and record ``"actor": "system"``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from sqlalchemy import select

from nefos.db.models import Container, Project, Vm
from nefos.domain.actors import BILLING_SUSPENSION
from nefos.schemas.vms import VmStop
from nefos.services.containers import ContainerService
from nefos.services.core import Core
from nefos.services.vms import VmService

log = logging.getLogger(__name__)


def suspender(core: Core) -> Callable[[str], Awaitable[None]]:
    """The function that stops every running VM and container of an organisation
    (a ``billing.engine.Suspend``; a service names no loop, not even its types)."""

    async def suspend(org_id: str) -> None:
        async with core.db.sessionmaker() as session:
            projects = select(Project.id).where(Project.organisation_id == org_id)
            vms = (
                await session.scalars(
                    select(Vm).where(Vm.project_id.in_(projects), Vm.status == "running")
                )
            ).all()
            containers = (
                await session.scalars(
                    select(Container).where(
                        Container.project_id.in_(projects), Container.status == "running"
                    )
                )
            ).all()
        for vm in vms:
            async with core.db.sessionmaker() as session:
                try:
                    await VmService(core, session).stop(BILLING_SUSPENSION, vm, VmStop())
                except Exception:
                    log.exception("could not stop VM %s of a suspended organisation", vm.id)
        for c in containers:
            async with core.db.sessionmaker() as session:
                try:
                    await ContainerService(core, session).stop(BILLING_SUSPENSION, c)
                except Exception:
                    log.exception("could not stop container %s of a suspended organisation", c.id)

    return suspend
