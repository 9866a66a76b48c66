"""Reading the Trainer arguments that take several forms (Lightning's spellings), each checked
once, with a ConfigError that names the argument and what it accepts."""
from __future__ import annotations

import datetime
import math
import re
from typing import Any

from trainkit.errors import ConfigError


def count(name: str, value: Any, minimum: int = 0, optional: bool = False) -> int | None:
    """An int >= minimum (None allowed when `optional`)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        allowed = f"an int >= {minimum}" + (" or None" if optional else "")
        raise ConfigError(f"{name}={value!r} must be {allowed}")
    return value


def flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} must be True or False")
    return value


def fast_dev_run_batches(value: Any) -> int:
    """fast_dev_run: True is 1 batch, an int n is n batches, False/0 is off."""
    if isinstance(value, bool):
        return int(value)
    if not isinstance(value, int) or value < 0:
        raise ConfigError(f"fast_dev_run={value!r} must be True/False or an int >= 0 (batches of each loop)")
    return value


def batches_or_fraction(name: str, value: Any) -> int | float:
    """An int count of batches, or a float fraction in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (
            isinstance(value, float) and value > 1.0):
        raise ConfigError(f"{name}={value!r} must be an int (batches) or a float in [0, 1] (a fraction)")
    return value


def sanity_steps(value: Any) -> int | float:
    """num_sanity_val_steps: n batches of each val loader before training; -1 for all of them."""
    if value == -1 and not isinstance(value, bool):
        return math.inf
    return count("num_sanity_val_steps", value, minimum=0)


_DURATION = re.compile(r"(\d+):(\d\d):(\d\d):(\d\d)")


def duration_seconds(value: Any, name: str = "max_time") -> float | None:
    """A duration as Lightning takes it (Trainer(max_time=...), Timer(duration=...)): "DD:HH:MM:SS",
    a dict of timedelta arguments ({"hours": 2}), or a timedelta; also a number of seconds. `name`
    is what the error message calls it."""
    if value is None:
        return None
    if isinstance(value, str):
        match = _DURATION.fullmatch(value.strip())
        if not match:
            raise ConfigError(f"{name}={value!r} is not a duration: use \"DD:HH:MM:SS\" (e.g. \"00:12:00:00\"), "
                              "a dict such as {hours: 12}, or a number of seconds")
        days, hours, minutes, seconds = (int(g) for g in match.groups())
        value = datetime.timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    elif isinstance(value, dict):
        try:
            value = datetime.timedelta(**value)
        except TypeError as exc:
            raise ConfigError(f"{name}={value!r}: {exc}; use keys days, hours, minutes, seconds") from None
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{name}={value!r} must be a positive duration (\"DD:HH:MM:SS\", a dict, a timedelta "
                          "or seconds)")
    return float(value)


def devices_count(value: Any) -> int:
    """devices per node: an int, "auto" (or -1): as many as this process's launcher started on its node."""
    if value == "auto" or (value == -1 and not isinstance(value, bool)):
        from trainkit.launch.env import from_environ

        return from_environ().local_world_size
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"devices={value!r} must be an int >= 1 or \"auto\"")
    return value


def as_list(value: Any) -> list:
    """A callback or logger given alone, a list of them, or None."""
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
