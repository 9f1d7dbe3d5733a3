"""Job configs are dataclasses whose fields carry their help text (with units), so it travels with the config
into stored JSON schemas and command-line help."""

from __future__ import annotations

from dataclasses import field
from typing import Any


def option(default: Any, help_text: str) -> Any:
    return field(default=default, metadata={"help": help_text})
