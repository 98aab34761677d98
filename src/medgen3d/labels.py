"""Label tables: which integer means which structure, and in which colour.

A table travels with every model, so a generated mask shows the same names and colours
in the CLI, in exported datasets and in napari. On disk it is a small text file, one label
per line::

    # value  name   colour
    0        background  #000000
    2        right_lung  #4f9fd0   optional free text after the colour

Lines starting with ``#`` are comments. The colour is optional (a fixed palette fills it),
and anything after it is a description. Datasets whose label values differ from a model's
table are remapped with :meth:`LabelTable.remap`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from medgen3d.errors import InputError

__all__ = [
    "UNLISTED",
    "Label",
    "LabelTable",
    "bundled_mapping",
    "bundled_mappings",
    "bundled_table",
    "label_mapping",
    "read_label_mapping",
]

# The key of a label mapping that stands for every value it does not list (``*`` in files).
UNLISTED = -1
_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")
# Distinct fallback colours (tab20-like), used when a table file names none.
_PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
    "#ff9896",
    "#c5b0d5",
    "#c49c94",
)


@dataclass(frozen=True)
class Label:
    """One entry of a label table."""

    value: int
    name: str
    colour: str  # "#rrggbb"

    @property
    def rgba(self) -> tuple[float, float, float, float]:
        """The colour as floats in [0, 1], opaque."""
        rgb = tuple(int(self.colour[i : i + 2], 16) / 255 for i in (1, 3, 5))
        return (*rgb, 1.0)  # type: ignore[return-value]


@dataclass(frozen=True)
class LabelTable:
    """An ordered set of labels with unique values, background (0) first.

    Models work with channel indices ``0 .. C-1``; the table maps each channel to its
    label value, so tables need not be contiguous.
    """

    labels: tuple[Label, ...]

    def __post_init__(self) -> None:
        values = [label.value for label in self.labels]
        if not values or values[0] != 0:
            raise ValueError("a label table starts with value 0 (background)")
        if len(set(values)) != len(values):
            raise ValueError(f"label values repeat: {values}")
        if len({label.name for label in self.labels}) != len(self.labels):
            raise ValueError("label names repeat")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def values(self) -> tuple[int, ...]:
        return tuple(label.value for label in self.labels)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(label.name for label in self.labels)

    def value_of(self, name: str) -> int:
        """The value of the label called ``name``."""
        for label in self.labels:
            if label.name == name:
                return label.value
        raise KeyError(f"no label named {name!r}; known: {', '.join(self.names)}")

    # ---- conversion between label values and channel indices -------------------------
    def to_channels(self, labels: np.ndarray, source: str | Path | None = None) -> np.ndarray:
        """Map label values to channel indices ``0 .. C-1`` (uint8).

        Raises:
            InputError: naming ``source``, when a value is not in the table.
        """
        self.check_values(labels, source)
        lookup = np.zeros(max(self.values) + 1, dtype=np.uint8)
        lookup[list(self.values)] = np.arange(len(self), dtype=np.uint8)
        return lookup[labels]

    def from_channels(self, channels: np.ndarray) -> np.ndarray:
        """Map channel indices back to label values (uint8, or uint16 for large values)."""
        dtype = np.uint8 if max(self.values) <= 255 else np.uint16
        return np.asarray(self.values, dtype=dtype)[channels]

    def check_values(self, labels: np.ndarray, source: str | Path | None = None) -> None:
        """Raise an :class:`InputError` when ``labels`` holds a value outside the table."""
        unknown = sorted(set(np.unique(labels).tolist()) - set(self.values))
        if unknown:
            raise InputError(
                f"label values {_preview(unknown)} are not in the label table "
                f"({', '.join(f'{v}={n}' for v, n in zip(self.values, self.names, strict=True))});"
                " translate them with --label-map FILE ('source target' per line) or a shipped "
                f"mapping ({', '.join(bundled_mappings())})",
                source,
            )

    def translate(
        self,
        labels: np.ndarray,
        mapping: Mapping[int, int] | None,
        source: str | Path | None = None,
    ) -> np.ndarray:
        """``labels`` translated with a user's ``mapping`` (:meth:`remap`), or, without
        one, checked to be in this table already (:meth:`check_values`).

        Raises:
            InputError: naming ``source``, for values the mapping or the table lacks.
        """
        if mapping is not None:
            return self.remap(labels, mapping, source)
        self.check_values(labels, source)
        return labels

    def conform(
        self,
        labels: np.ndarray,
        mapping: Mapping[int, int] | None,
        source: str | Path | None = None,
    ) -> np.ndarray:
        """``labels`` in this table's values, whichever of two conventions they come in.

        A label volume whose values are all in the table is taken as it is (a mask the
        model generated, or one painted in napari). Otherwise, when the model has a
        ``mapping`` (its training data's convention, such as raw DLMUSE values for the brain
        model), the volume is translated with it.

        Raises:
            InputError: naming ``source``, for values neither convention knows.
        """
        in_table = set(np.unique(labels).tolist()) <= set(self.values)
        return self.translate(labels, None if in_table else mapping, source)

    def remap(
        self,
        labels: np.ndarray,
        mapping: Mapping[int, int],
        source: str | Path | None = None,
    ) -> np.ndarray:
        """Translate a dataset's label values onto this table.

        Args:
            labels: a label volume in the dataset's own values.
            mapping: dataset value -> table value. Every value present in ``labels`` must
                be a key (map structures you do not model to 0), unless the mapping has an
                :data:`UNLISTED` key, whose target every other value takes. Targets must be
                in the table.
            source: the file ``labels`` came from, for error messages.

        Returns:
            The remapped volume, same shape, uint8/uint16.

        Raises:
            InputError: naming ``source``, for a value present but unmapped, or a target
                outside the table.
        """
        bad_targets = sorted(set(mapping.values()) - set(self.values))
        if bad_targets:
            raise InputError(f"label mapping targets {_preview(bad_targets)} are not in the table")
        present = np.unique(labels).tolist()
        unmapped = [v for v in present if v not in mapping]
        if unmapped and UNLISTED not in mapping:
            raise InputError(
                f"label values {_preview(unmapped)} have no entry in the label mapping; add "
                "'value target' lines for them, or '* 0' to send every unlisted value to "
                "background",
                source,
            )
        lookup = np.full(max(present) + 1, mapping.get(UNLISTED, 0), dtype=np.uint16)
        for src, dst in mapping.items():
            if 0 <= src <= max(present):  # a negative key would index from the end
                lookup[src] = dst
        return lookup[labels].astype(np.uint8 if max(self.values) <= 255 else np.uint16)

    # ---- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, list]:
        """A JSON-friendly form (checkpoint configs, dataset.json)."""
        colours = [label.colour for label in self.labels]
        return {"values": list(self.values), "names": list(self.names), "colours": colours}

    @classmethod
    def from_dict(cls, d: Mapping[str, list]) -> LabelTable:
        rows = zip(d["values"], d["names"], d["colours"], strict=True)
        return cls(tuple(Label(int(v), str(n), str(c)) for v, n, c in rows))

    @classmethod
    def from_text(cls, text: str, source: str | Path | None = None) -> LabelTable:
        """Parse the file format; errors name ``source`` and the line."""
        labels = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            tokens = line.split()
            if not tokens or tokens[0].startswith("#"):
                continue
            if len(tokens) < 2 or not tokens[0].isdigit():
                raise InputError(f"line {lineno}: expected '<value> <name> [#rrggbb]'", source)
            colour = tokens[2] if len(tokens) > 2 and _COLOUR.match(tokens[2]) else None
            value = int(tokens[0])
            labels.append(Label(value, tokens[1], colour or _default_colour(value)))
        try:
            return cls(tuple(labels))
        except ValueError as exc:
            raise InputError(str(exc), source) from exc

    @classmethod
    def read(cls, path: str | Path) -> LabelTable:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise InputError(f"cannot read label table ({exc.strerror})", path) from exc
        return cls.from_text(text, path)


def bundled_table(name: str) -> LabelTable:
    """A label table shipped with the package (``medgen3d/labels/<name>.txt``)."""
    ref = resources.files("medgen3d") / "labels" / f"{name}.txt"
    return LabelTable.from_text(ref.read_text(), f"medgen3d/labels/{name}.txt")


def read_label_mapping(path: str | Path) -> dict[int, int]:
    """Read a label-mapping file: one ``source_value target_value`` pair per line.

    A source may be a range, ``first-last`` (both included), for parcellations that number
    many regions of one structure consecutively (FreeSurfer's cortical parcels), or ``*``:
    every value not listed (``* 0`` sends the structures a model does not know to
    background, which happens only when the mapping says so). Text after
    ``#`` is a comment (the shipped mappings name each source structure there), so a mapping
    stays readable next to the parcellation it translates.

    Raises:
        InputError: naming the file and the line, for unreadable files, malformed lines or a
            source value given twice.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(f"cannot read label mapping ({exc.strerror})", path) from exc
    mapping: dict[int, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        tokens = line.split("#", 1)[0].split()
        if not tokens:
            continue
        sources = None if len(tokens) != 2 else _value_range(tokens[0])
        if len(tokens) == 2 and tokens[0] == "*":
            sources = [UNLISTED]
        if sources is None or not tokens[1].isdigit():
            raise InputError(
                f"line {lineno}: expected '<source value, first-last or *> <target value>'",
                path,
            )
        for source in sources:
            if source in mapping:
                raise InputError(f"line {lineno}: source value {source} is mapped twice", path)
            mapping[source] = int(tokens[1])
    if not mapping:
        raise InputError("the label mapping is empty", path)
    return mapping


def _value_range(token: str) -> range | None:
    """``"7"`` -> ``range(7, 8)``, ``"1000-1035"`` -> ``range(1000, 1036)``, else ``None``."""
    first, _, last = token.partition("-")
    if not first.isdigit() or (last and not last.isdigit()):
        return None
    end = int(last or first)
    return range(int(first), end + 1) if end >= int(first) else None


def bundled_mapping(name: str) -> dict[int, int]:
    """A label mapping shipped with the package (``medgen3d/labels/<name>.txt``), e.g.
    ``freesurfer_to_brain_mri``."""
    ref = resources.files("medgen3d") / "labels" / f"{name}.txt"
    if not ref.is_file():
        raise FileNotFoundError(name)
    return read_label_mapping(Path(str(ref)))


def bundled_mappings() -> list[str]:
    """The names of the label mappings shipped with the package."""
    folder = resources.files("medgen3d").joinpath("labels")
    return sorted(p.name.removesuffix(".txt") for p in folder.iterdir() if "_to_" in p.name)


def label_mapping(spec: str | Path) -> dict[int, int]:
    """A mapping from a file path or the name of a bundled mapping.

    Raises:
        InputError: naming ``spec``, when it is neither.
    """
    path = Path(spec)
    if path.is_file():
        return read_label_mapping(path)
    try:
        return bundled_mapping(str(spec))
    except FileNotFoundError:
        raise InputError(
            "is neither a label-mapping file nor a bundled mapping "
            f"({', '.join(bundled_mappings())})",
            spec,
        ) from None


def _default_colour(value: int) -> str:
    return "#000000" if value == 0 else _PALETTE[(value - 1) % len(_PALETTE)]


def _preview(values: list[int], limit: int = 8) -> str:
    shown = ", ".join(map(str, values[:limit]))
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")
