"""Running the kchaos binary and reading its JSON output."""

import json
import os
import re
import shutil
import subprocess
from typing import Any, Dict, FrozenSet, List, Optional, Sequence

from chaoslib.exceptions import ActivityFailed
from chaoslib.types import Configuration

__all__ = ["KchaosError", "kchaos_bin", "run", "run_json", "flags", "known_flags", "RESERVED_FLAGS"]

# Flags an activity's ``arguments`` may not set: the action sets them itself (duration, name,
# detach, the targets), they write a file as root wherever they point (json, report, junit, html),
# open a listening port (metrics), or lift a safety check (allow-host).
RESERVED_FLAGS: FrozenSet[str] = frozenset(
    {
        "duration", "name", "detach", "cgroup", "pid", "container", "pod",
        "json", "report", "junit", "html", "metrics", "metrics-linger",
        "allow-host", "help", "version",
    }
)
_FLAG_LINE = re.compile(r"^\s+(?:-[A-Za-z], )?--([a-z0-9][a-z0-9-]*)")
_KNOWN: Dict[str, FrozenSet[str]] = {}

# How long one kchaos command may take before the activity fails: `--detach` returns once every
# fault is armed, which takes seconds (eBPF programs are loaded and verified first).
DEFAULT_TIMEOUT_S = 120


class KchaosError(ActivityFailed):
    """kchaos refused or failed; the message carries its exit code and its own error line.
    ``exit_code`` is None when kchaos did not run to its end (not found, timed out)."""

    def __init__(self, message: str, exit_code: Optional[int] = None):
        super().__init__(message)
        self.exit_code = exit_code


def kchaos_bin(configuration: Optional[Configuration] = None) -> str:
    """The binary to run: the experiment's ``kchaos_bin`` configuration, else ``KCHAOS_BIN`` (both the
    operator's, never an activity's arguments), else ``kchaos`` on PATH. A configured one must be an
    absolute path to an executable file: a bare name would be looked up on PATH."""
    configured = (configuration or {}).get("kchaos_bin") or os.environ.get("KCHAOS_BIN")
    if configured:
        path = str(configured)
        if not os.path.isabs(path) or not os.path.isfile(path) or not os.access(path, os.X_OK):
            raise KchaosError(
                f"kchaos_bin {path!r}: give the absolute path of the kchaos executable"
            )
        return path
    found = shutil.which("kchaos")
    if not found:
        raise KchaosError(
            "kchaos is not on PATH: install it, or set KCHAOS_BIN or the experiment's "
            "configuration key kchaos_bin to its path"
        )
    return found


def run(
    args: Sequence[str],
    configuration: Optional[Configuration] = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> subprocess.CompletedProcess:
    """Runs ``kchaos ARGS``; raises KchaosError when it exits non-zero."""
    argv = [kchaos_bin(configuration), *args]
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as e:
        raise KchaosError(f"cannot run {argv[0]}: {e}") from e
    except subprocess.TimeoutExpired as e:
        raise KchaosError(f"`{' '.join(argv)}` took more than {timeout}s") from e
    if done.returncode != 0:
        why = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise KchaosError(
            f"`{' '.join(argv)}` exited {done.returncode}: {why[-1] if why else 'no output'}",
            exit_code=done.returncode,
        )
    return done


def run_json(
    args: Sequence[str], configuration: Optional[Configuration] = None
) -> Any:
    """Runs ``kchaos ARGS`` and parses its standard output as JSON."""
    done = run(args, configuration)
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError as e:
        raise KchaosError(
            f"`kchaos {' '.join(args)}` did not print JSON ({e}): {done.stdout[:200]!r}"
        ) from e


def known_flags(kind: str, configuration: Optional[Configuration] = None) -> FrozenSet[str]:
    """The flags ``kchaos KIND --help`` lists (read once per binary and kind), less the reserved
    ones: what an activity's ``arguments`` may set."""
    key = f"{kchaos_bin(configuration)}\0{kind}"
    if key not in _KNOWN:
        text = run([kind, "--help"], configuration).stdout
        listed = {m.group(1) for m in map(_FLAG_LINE.match, text.splitlines()) if m}
        _KNOWN[key] = frozenset(listed - RESERVED_FLAGS)
    return _KNOWN[key]


def flags(
    arguments: Optional[Dict[str, Any]], allowed: Optional[FrozenSet[str]] = None
) -> List[str]:
    """``{"percent": 5, "dst": ["10.0.0.7", "10.0.0.8"], "egress_only": True}`` as
    ``--percent 5 --dst 10.0.0.7 --dst 10.0.0.8 --egress-only``: the command line's own flags, so
    every option kchaos has is reachable with the names its ``--help`` shows. With ``allowed``, a
    key that is not one of them is refused (naming it and what is allowed), before kchaos runs."""
    out: List[str] = []
    for key, value in (arguments or {}).items():
        name = str(key).replace("_", "-")
        flag = "--" + name
        if allowed is not None and name not in allowed:
            why = (
                "is set by the extension or not allowed from an experiment"
                if name in RESERVED_FLAGS
                else "is not a flag of this command"
            )
            raise KchaosError(
                f"arguments: key {key!r} {why}; allowed: {', '.join(sorted(allowed))}"
            )
        if isinstance(value, (dict, set)):
            raise KchaosError(f"arguments: key {key!r}: a value, a list or true/false")
        if value is None or value is False:
            continue
        if value is True:
            out.append(flag)
        elif isinstance(value, (list, tuple)):
            for item in value:
                out.extend([flag, str(item)])
        else:
            out.extend([flag, str(value)])
    return out
