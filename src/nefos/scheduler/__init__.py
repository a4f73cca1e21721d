"""Pure placement: which host gets each replica. No I/O, no database, no clock.

``place`` is the reference: it runs every filter over every host and weighs the
survivors, O(hosts) per replica. ``HostPool`` keeps the same hosts in weight order
between calls and makes the same choices without looking at every host, for the
services layer's in-memory view of the fleet. Both raise ``NoValidHost`` (a
``ResourceExhausted``) with per-filter rejection counts when a replica fits nowhere,
having placed nothing.
"""

from nefos.scheduler.filters import DEFAULT_FILTERS, HostFilter, first_failure, host_passes
from nefos.scheduler.placement import HostPool, NoValidHost, Placement, place
from nefos.scheduler.types import HostState, PlacementRequest, SchedulerConfig
from nefos.scheduler.weighers import sort_key, weigh

__all__ = [
    "DEFAULT_FILTERS",
    "HostFilter",
    "HostPool",
    "HostState",
    "NoValidHost",
    "Placement",
    "PlacementRequest",
    "SchedulerConfig",
    "first_failure",
    "host_passes",
    "place",
    "sort_key",
    "weigh",
]
