"""Typed environment readers that fail loudly on a malformed value, and the list of what was read.

Every setting of Prospect comes from the environment; the defaults are the ones that work on a
laptop with nothing else installed (SQLite, the offline demo model). Each reader records the
variable, its default and what it means in DECLARED, from which the README's configuration table
is generated (scripts/config_table.py), and against which the test suite checks that table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Variable:
    name: str
    default: object
    meaning: str
    shown: str | None = None  # how the README shows the default, when the value itself is machine-specific

    def default_text(self) -> str:
        if self.shown is not None:
            return self.shown
        if isinstance(self.default, bool):
            return "on" if self.default else "off"
        if isinstance(self.default, float):
            return f"{self.default:.6g}"
        if isinstance(self.default, list):
            return ", ".join(self.default) or "empty"
        return str(self.default) if self.default not in ("", None) else "unset"


# name -> Variable, in the order config/settings.py reads them.
DECLARED: dict[str, Variable] = {}


def _declare(name: str, default, meaning: str, shown: str | None) -> None:
    DECLARED[name] = Variable(name, default, meaning, shown)


def env_str(name: str, default: str = "", meaning: str = "", *, shown: str | None = None) -> str:
    _declare(name, default, meaning, shown)
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False, meaning: str = "", *, shown: str | None = None) -> bool:
    _declare(name, default, meaning, shown)
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use 1/0, true/false, yes/no)")


def env_int(name: str, default: int, meaning: str = "", *, shown: str | None = None) -> int:
    _declare(name, default, meaning, shown)
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer") from None


def env_float(name: str, default: float, meaning: str = "", *, shown: str | None = None) -> float:
    _declare(name, default, meaning, shown)
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number") from None


def env_list(name: str, default: list[str], meaning: str = "", *, shown: str | None = None) -> list[str]:
    _declare(name, default, meaning, shown)
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def configuration_table() -> str:
    """The README's configuration table: every variable read so far (all of them once
    config/settings.py has been imported), with its default and meaning."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    rows += [f"| `{v.name}` | {v.default_text()} | {v.meaning} |" for v in DECLARED.values()]
    return "\n".join(rows) + "\n"
