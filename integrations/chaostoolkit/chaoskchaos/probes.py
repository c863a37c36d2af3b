"""Probes: what kchaos is running now, a run's kernel counters, what this kernel offers."""

from typing import Any, Dict, List

from chaoslib.types import Configuration, Secrets

from chaoskchaos.runner import KchaosError, run_json

__all__ = ["runs", "run_status", "is_running", "counters", "counter", "capabilities"]


def runs(configuration: Configuration = None, secrets: Secrets = None) -> List[Dict[str, Any]]:
    """Every kchaos run in progress on this host (``kchaos status --json``)."""
    status = run_json(["status", "--json"], configuration)
    listed = status.get("runs", []) if isinstance(status, dict) else status
    return [r for r in listed if isinstance(r, dict)]


def run_status(
    name: str, configuration: Configuration = None, secrets: Secrets = None
) -> Dict[str, Any]:
    """The status of the run called ``name``: pid, kinds, targets, time left, counters."""
    for r in runs(configuration):
        if r.get("name") == name:
            return r
    raise KchaosError(f"no kchaos run called {name!r} is running")


def is_running(name: str, configuration: Configuration = None, secrets: Secrets = None) -> bool:
    """True while the run called ``name`` is in progress."""
    return any(r.get("name") == name for r in runs(configuration))


def counters(
    name: str, configuration: Configuration = None, secrets: Secrets = None
) -> Dict[str, int]:
    """The kernel counters of the run called ``name`` (for a net fault: packets seen, matched,
    dropped ... per direction), summed over its faults."""
    return _sum_counters(run_status(name, configuration))


def counter(
    name: str, counter: str, configuration: Configuration = None, secrets: Secrets = None
) -> int:
    """One counter of the run called ``name``, e.g. ``egress.dropped``; 0 when it has none yet.
    Fit for a steady-state tolerance such as ``{"type": "range", "range": [1, 1e12]}``."""
    return int(counters(name, configuration).get(counter, 0))


def capabilities(configuration: Configuration = None, secrets: Secrets = None) -> Dict[str, Any]:
    """What this kernel offers kchaos (``kchaos probe --json``): the hooks and backends found."""
    return run_json(["probe", "--json"], configuration)


def _sum_counters(status: Dict[str, Any]) -> Dict[str, int]:
    total: Dict[str, int] = {}
    faults = status.get("faults")
    sources = [f.get("counters", {}) for f in faults] if isinstance(faults, list) else []
    if isinstance(status.get("counters"), dict):
        sources.append(status["counters"])
    for source in sources:
        for key, value in source.items():
            if isinstance(value, (int, float)):
                total[key] = total.get(key, 0) + int(value)
    return total
