"""The sim driver: SIMULATED hosts in memory, for scheduler benchmarks and demos only.

Nothing runs on a sim host and nothing is isolated; it is never a default. See
:mod:`nefos.drivers.sim.driver` for what it simulates and its fault hooks.
"""

from nefos.drivers.sim.driver import (
    SimDriver,
    SimHostConfig,
    crash,
    image_is_missing,
    parse_uri,
    recorded_spec,
    remove,
    reset,
    set_reachable,
)

__all__ = [
    "SimDriver",
    "SimHostConfig",
    "crash",
    "image_is_missing",
    "parse_uri",
    "recorded_spec",
    "remove",
    "reset",
    "set_reachable",
]
