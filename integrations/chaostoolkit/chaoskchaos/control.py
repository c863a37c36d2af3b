"""A control that stops, when the experiment ends, every kchaos run its actions started.

Declare it once in the experiment:

    "controls": [{"name": "kchaos", "provider": {"type": "python", "module": "chaoskchaos.control"}}]

Chaos Toolkit calls ``after_experiment_control`` when the experiment ends and ``cleanup_control``
in its ``finally`` (also after Ctrl-C or SIGTERM, and when an activity failed before the
rollbacks ran): whichever comes first stops the runs; each run's own ``duration`` bounds it even if
Chaos Toolkit itself is killed.
"""

import logging
from typing import Any

from chaoslib.types import Configuration, Experiment, Journal, Secrets, Settings

from chaoskchaos import started
from chaoskchaos.runner import KchaosError, run

__all__ = ["configure_control", "after_experiment_control", "cleanup_control"]
logger = logging.getLogger("chaostoolkit")


def configure_control(
    experiment: Experiment = None,
    configuration: Configuration = None,
    secrets: Secrets = None,
    settings: Settings = None,
    **kwargs: Any,
) -> None:
    """Starts from nothing remembered."""
    started.take_all()


def after_experiment_control(
    context: Experiment, state: Journal = None, **kwargs: Any
) -> None:
    _stop_started()


def cleanup_control(**kwargs: Any) -> None:
    _stop_started()


def _stop_started() -> None:
    for name, configuration in started.take_all():
        try:
            run(["stop", "--name", name], configuration)
            logger.info(f"kchaos: stopped run '{name}'")
        except KchaosError as e:
            # Already ended (its duration elapsed, or a rollback stopped it): nothing to undo.
            logger.debug(f"kchaos: run '{name}' was not running: {e}")
