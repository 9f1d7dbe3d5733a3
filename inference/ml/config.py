"""Job configs are dataclasses whose fields carry their help text (with units), so it travels with the config
into stored JSON schemas and command-line help. `Settings` is their one (de)serialiser: `from_dict` refuses unknown
or ill-typed keys with a sentence, `as_dict` gives plain JSON (tuples as lists)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, field, fields
from typing import Any, ClassVar


def option(default: Any, help_text: str) -> Any:
    """A dataclass field with its help text; mutable defaults (dicts, lists) are copied per instance."""
    if isinstance(default, (dict, list, set)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help_text})
    return field(default=default, metadata={"help": help_text})


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class Settings:
    """Mixin of the option dataclasses. `what` names the settings in error messages ("finetuning settings")."""

    what: ClassVar[str] = "settings"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        if not isinstance(data, Mapping):
            raise ValueError(f"The {cls.what} must be an object.")
        data = cls._inflate(dict(data))
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"Unknown {cls.what}: {', '.join(sorted(unknown))}.")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ValueError(f"{cls.what}: {exc}") from None

    @classmethod
    def _inflate(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Nested settings from their JSON form; the identity unless a config holds nested configs or tuples."""
        return data

    def as_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))
