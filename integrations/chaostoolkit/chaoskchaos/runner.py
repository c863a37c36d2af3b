"""Running the kchaos binary and reading its JSON output."""

import json
import os
import shutil
import subprocess
from typing import Any, Dict, List, Optional, Sequence

from chaoslib.exceptions import ActivityFailed
from chaoslib.types import Configuration

__all__ = ["KchaosError", "kchaos_bin", "run", "run_json", "flags"]

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
    """The binary to run: the experiment's ``kchaos_bin`` configuration, else ``KCHAOS_BIN``, else
    ``kchaos`` on PATH."""
    configured = (configuration or {}).get("kchaos_bin") or os.environ.get("KCHAOS_BIN")
    if configured:
        return str(configured)
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


def flags(arguments: Optional[Dict[str, Any]]) -> List[str]:
    """``{"percent": 5, "dst": ["10.0.0.7", "10.0.0.8"], "egress_only": True}`` as
    ``--percent 5 --dst 10.0.0.7 --dst 10.0.0.8 --egress-only``: the command line's own flags, so
    every option kchaos has is reachable with the names its ``--help`` shows."""
    out: List[str] = []
    for key, value in (arguments or {}).items():
        flag = "--" + str(key).replace("_", "-")
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
