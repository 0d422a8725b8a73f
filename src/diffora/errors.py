"""The exceptions users see: a single line saying what is wrong and how to fix it."""

from __future__ import annotations

import re
from collections.abc import Callable

_OPTION = re.compile(r"`(\w+)`")


class DifforaError(Exception):
    """A user-facing error; the CLI prints its message as one line and exits with status 2."""


class OptionError(DifforaError):
    """A bad option value. The message marks options as `name` (the config field or the function's
    parameter): the library shows those names; the CLI re-spells each mark as its flag (`render`)."""

    def __init__(self, template: str, owner: type | None = None) -> None:
        self.template = template
        self.owner = owner  # the config class whose field is wrong, when the message came from one
        super().__init__(template)

    def render(self, spell: Callable[[str, type | None], str | None]) -> str:
        """The message with every `name` replaced by `spell(name, owner)` (kept as is where that is None)."""
        return _OPTION.sub(lambda mark: spell(mark.group(1), self.owner) or mark.group(0), self.template)
