"""Job configs are dataclasses whose fields carry their help text (with units), so it travels with the config
into stored JSON schemas and command-line help."""

from __future__ import annotations

from dataclasses import field
from typing import Any


def option(default: Any, help_text: str) -> Any:
    """A dataclass field with its help text; mutable defaults (dicts, lists) are copied per instance."""
    if isinstance(default, (dict, list, set)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help_text})
    return field(default=default, metadata={"help": help_text})
