"""Actions: start kchaos faults and scenarios in the background under a name, and stop them."""

import re
import secrets as _random
from typing import Any, Dict, List, Optional, Union

from chaoslib.types import Configuration, Secrets

from chaoskchaos import started
from chaoskchaos.probes import run_status
from chaoskchaos.runner import KchaosError, flags, known_flags, run

__all__ = ["start_fault", "run_scenario", "stop_run"]

FAULT_KINDS = ("net", "syscall", "stress", "pause", "kill", "time")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _name(name: Optional[str], prefix: str) -> str:
    if name is None:
        return f"ctk-{prefix}-{_random.token_hex(3)}"
    if not _NAME.match(name):
        raise KchaosError(
            f"name {name!r}: use 1 to 63 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    return name


def _targets(cgroup: Union[str, List[str], None], pid: Union[int, List[int], None]) -> List[str]:
    out: List[str] = []
    for cg in [cgroup] if isinstance(cgroup, str) else cgroup or []:
        out.extend(["--cgroup", str(cg)])
    for p in [pid] if isinstance(pid, (int, str)) else pid or []:
        out.extend(["--pid", str(p)])
    if not out:
        raise KchaosError("give the fault a target: cgroup (a path or a list) or pid")
    return out


def _start(args: List[str], run_name: str, configuration: Configuration) -> None:
    """Runs ``kchaos ARGS --detach``. The name is remembered first: a Ctrl-C while kchaos starts
    (the detached run may be armed already) must still reach it through the control."""
    started.remember(run_name, configuration)
    try:
        run(args, configuration)
    except KchaosError as e:
        # kchaos ended with an error: it undid what it had started, nothing of this name runs. If
        # it did not end (a timeout), the control still stops the name.
        if e.exit_code is not None:
            started.forget(run_name)
        raise


def start_fault(
    kind: str,
    duration: str,
    cgroup: Union[str, List[str], None] = None,
    pid: Union[int, List[int], None] = None,
    arguments: Optional[Dict[str, Any]] = None,
    name: Optional[str] = None,
    configuration: Configuration = None,
    secrets: Secrets = None,
) -> Dict[str, Any]:
    """Starts one kchaos fault in the background and returns once it is armed.

    ``kind`` is a kchaos fault command (net, syscall, stress, pause, kill, time); ``arguments`` its flags
    by name, e.g. ``{"percent": 5}`` for ``--percent 5`` or ``{"syscall": "connect", "errno":
    "ECONNREFUSED", "percent": 30}``. ``duration`` (e.g. ``"30s"``) bounds the fault: it ends then
    even if nothing stops it. Returns the run's status (name, pid, counters so far). The control
    ``chaoskchaos.control`` stops it when the experiment ends; ``stop_run`` stops it earlier."""
    if kind not in FAULT_KINDS:
        raise KchaosError(f"kind {kind!r}: one of {', '.join(FAULT_KINDS)}")
    run_name = _name(name, kind)
    args = [kind, *_targets(cgroup, pid), *flags(arguments, known_flags(kind, configuration))]
    args += ["--duration", str(duration), "--name", run_name, "--detach"]
    _start(args, run_name, configuration)
    return run_status(run_name, configuration)


def run_scenario(
    path: str,
    name: Optional[str] = None,
    variables: Optional[Dict[str, str]] = None,
    accept_risk: bool = False,
    configuration: Configuration = None,
    secrets: Secrets = None,
) -> Dict[str, Any]:
    """Starts a kchaos scenario file (``kchaos run PATH``) in the background; returns once its run
    has started. ``variables`` fill the scenario's ``${var}`` (``--var NAME=VALUE``)."""
    run_name = _name(name, "scenario")
    args = ["run", str(path), "--name", run_name, "--detach"]
    for key, value in (variables or {}).items():
        if not _VAR.match(str(key)):
            raise KchaosError(f"variables: name {key!r}: letters, digits and '_', not starting with a digit")
        args += ["--var", f"{key}={value}"]
    if accept_risk:
        args.append("--accept-risk")
    _start(args, run_name, configuration)
    return run_status(run_name, configuration)


def stop_run(
    name: str, configuration: Configuration = None, secrets: Secrets = None
) -> Dict[str, Any]:
    """Stops the kchaos run called ``name`` and undoes what it attached (``kchaos stop --name``).
    A run that already ended is not an error: its name is reported as not running."""
    try:
        run(["stop", "--name", name], configuration)
        stopped = True
    except KchaosError as e:
        if "no kchaos run is named" not in str(e):
            raise
        stopped = False
    started.forget(name)
    return {"name": name, "stopped": stopped}
