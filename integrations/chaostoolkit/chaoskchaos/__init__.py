"""Chaos Toolkit extension for kchaos.

kchaos injects network and system faults with eBPF, held to one cgroup. This package drives the
``kchaos`` binary (found through ``KCHAOS_BIN``, the experiment's ``kchaos_bin`` configuration, or
``PATH``) and reads its JSON: it needs nothing beyond chaostoolkit-lib.

- ``chaoskchaos.actions``: start a fault or a scenario detached under a name; stop it.
- ``chaoskchaos.probes``: the runs in progress, a run's kernel counters, what this kernel offers.
- ``chaoskchaos.control``: stops the runs an experiment started when it ends, however it ends.
"""

from typing import List

from chaoslib.discovery.discover import (
    discover_actions,
    discover_probes,
    initialize_discovery_result,
)
from chaoslib.types import DiscoveredActivities, Discovery

__all__ = ["__version__", "discover"]
__version__ = "0.1.0"


def discover(discover_system: bool = True) -> Discovery:
    """What ``chaos discover chaostoolkit-kchaos`` lists: the actions and probes of this package,
    and, with ``discover_system``, the kernel hooks ``kchaos probe`` finds on this machine."""
    discovery = initialize_discovery_result("chaostoolkit-kchaos", __version__, "kchaos")
    discovery["activities"].extend(load_exported_activities())
    if discover_system:
        from chaoskchaos.probes import capabilities
        from chaoskchaos.runner import KchaosError

        try:
            discovery["system"] = {"kchaos": capabilities()}
        except KchaosError as e:
            discovery["system"] = {"kchaos": {"error": str(e)}}
    return discovery


def load_exported_activities() -> List[DiscoveredActivities]:
    activities = []
    activities.extend(discover_actions("chaoskchaos.actions"))
    activities.extend(discover_probes("chaoskchaos.probes"))
    return activities
