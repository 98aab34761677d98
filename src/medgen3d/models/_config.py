"""Checks shared by the networks' config parsers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["check_keys"]


def check_keys(d: Mapping[str, Any], allowed: set[str], section: str) -> None:
    """Raise ``ValueError`` naming the unknown keys of config ``section``, so a typo in a
    recipe is an error instead of a silently used default."""
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ValueError(
            f"unknown {section} key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )
