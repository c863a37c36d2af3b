"""The runs this Python process started, so that the control can stop them when the experiment
ends (also when it is interrupted or an activity fails before the rollbacks)."""

from typing import List, Optional, Tuple

from chaoslib.types import Configuration

_STARTED: List[Tuple[str, Optional[Configuration]]] = []


def remember(name: str, configuration: Optional[Configuration]) -> None:
    _STARTED.append((name, configuration))


def forget(name: str) -> None:
    _STARTED[:] = [(n, c) for (n, c) in _STARTED if n != name]


def take_all() -> List[Tuple[str, Optional[Configuration]]]:
    """Every remembered run, forgotten as it is returned."""
    runs = list(_STARTED)
    _STARTED.clear()
    return runs
