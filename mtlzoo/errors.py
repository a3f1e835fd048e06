"""The errors mtlzoo raises for a user's mistake.

Every one is a subclass of :class:`MtlzooError`, so ``except MtlzooError`` catches all of them, and
the command line prints them as one message with no traceback. Each message says what was wrong
and what would work.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MtlzooError(Exception):
    """Base class of every error that reports a user's mistake."""


class UnknownComponentError(MtlzooError, LookupError):
    """A name (component, keyword argument, task) that nothing registered answers to."""


class DuplicateComponentError(MtlzooError):
    """Two plugins registered the same name for the same kind of component."""


class SpecSyntaxError(MtlzooError, ValueError):
    """A spec string that the grammar does not accept; the message points at the column."""

    def __init__(self, message: str, text: str, column: int) -> None:
        self.reason = message
        self.text = text
        self.column = column  # 1-based, as editors count
        caret = " " * (column - 1) + "^"
        super().__init__(f"{message} at column {column}\n  {text}\n  {caret}")


class IncompatibleComponentsError(MtlzooError):
    """Components that cannot be composed (a strategy needing stages on a backbone without)."""


class PluginLoadError(MtlzooError):
    """A plugin that failed to import or register, or built-ins that could not be found."""


class InvalidArgumentError(MtlzooError, ValueError):
    """A value outside what a component accepts (a negative weight, a tensor of the wrong shape)."""


class DataError(MtlzooError):
    """Data that is missing, corrupt, mis-shaped or out of range; names the file or sample."""


def did_you_mean(word: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Close matches of ``word`` among ``choices`` (case-insensitive), best first."""
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    hits = difflib.get_close_matches(word.lower(), list(lowered), n=n, cutoff=0.6)
    return [lowered[h] for h in hits]


def suggestion(word: str, choices: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` or an empty string."""
    hits = did_you_mean(word, choices)
    if not hits:
        return ""
    return " Did you mean " + " or ".join(repr(h) for h in hits) + "?"
