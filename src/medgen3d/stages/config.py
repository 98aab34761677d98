"""One way to read, check and write a network config: a frozen dataclass.

Every stage's network is built from a config section of its recipe (never from a class
name stored in a file), and a checkpoint stores the resolved config, so it never depends
on the defaults of the version that reads it. :class:`NetworkConfig` gives each stage's
dataclass the same parser and serialiser: unknown keys are an error naming the section,
lists become tuples, nested configs (a :class:`~medgen3d.diffusion.Diffusion`) start from
the field's default and take the keys given, and the subclass's ``__post_init__`` checks
the values, raising ``ValueError`` naming the key (the recipe loader turns it into an
:class:`~medgen3d.errors.InputError` naming the file).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, Self

__all__ = ["NetworkConfig", "check_keys", "positive_int"]


def check_keys(d: Mapping[str, Any], allowed: set[str], section: str) -> None:
    """Raise ``ValueError`` naming the unknown keys of config ``section``, so a typo in a
    recipe is an error instead of a silently used default."""
    if not isinstance(d, Mapping):
        raise ValueError(f"section {section!r} must be a JSON object, got {d!r}")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ValueError(
            f"unknown key(s) {', '.join(unknown)} in {section!r}; allowed: "
            f"{', '.join(sorted(allowed))}"
        )


def positive_int(value: Any, low: int = 1) -> bool:
    """Whether ``value`` is an integer (not a bool) of at least ``low``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """Base of the stages' network configs; subclasses are frozen dataclasses that set
    :attr:`SECTION` (named in errors) and check their values in ``__post_init__``."""

    SECTION: ClassVar[str] = "model"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Self:
        """The config for a recipe or checkpoint section; missing keys take the defaults.

        Raises:
            ValueError: naming the section and key, for unknown keys or invalid values.
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        check_keys(d, set(fields), cls.SECTION)
        defaults = cls()
        values = {}
        for name, value in d.items():
            default = getattr(defaults, name)
            if hasattr(default, "to_dict"):  # a nested config: the given keys over the default
                try:
                    value = type(default).from_dict({**default.to_dict(), **value})
                except (TypeError, ValueError) as exc:
                    raise ValueError(f"{cls.SECTION} {name!r}: {exc}") from None
            elif isinstance(value, list):
                value = tuple(value)
            values[name] = value
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (tuples as lists), as checkpoints store them."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _plain(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, tuple):
        return list(value)
    return value
