"""Landmark names: the one rule that matches a point of a landmark file to a channel, used by every command.

A point in a file carries a ``label`` (Slicer's label column, our ``name``) and often a ``description``
(Slicer's ``desc``). It is matched to a channel (a name of the datalist's ``landmark_names``, or of the
plans' when a trained model reads the data) by, in this order:

1. its label, then its description, each compared with the channel names,
   the declared ``landmark_aliases`` and the channels' ``landmark_descriptions``;
   case and whitespace are ignored (``"ac "`` is ``AC``, ``"Culmen"`` is ``culmen``);
2. a label that is a bare whole number (``"3"``) is never a name and never a channel index, unless the
   datalist declares ``landmark_numbering`` (the number of its first channel: AFIDs files number from 1);
   then ``"3"`` is the third channel (``landmark_numbering`` 1) of ``landmark_names``.

A point that matches no channel, two points that match the same channel, and a point whose label and
description match different channels are errors that name the file and every such point: data is
never dropped silently. Sources: Slicer .fcsv files keep a number in ``label`` and the name in ``desc``
(every public AFIDs file does: ``3,...,infracollicular sulcus``); nnU-Net and MONAI datalists name by key.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from scripts.errors import LandmarkDataError

_BARE_NUMBER = re.compile(r"\s*[+-]?\d+\s*")


def fold(name) -> str:
    """The key under which names that differ only in case or whitespace are one name."""
    return "".join(str(name).split()).casefold()


def is_bare_number(text) -> bool:
    """True for a label that is only a whole number ("3", " 12 "): a protocol number, not a name."""
    return bool(_BARE_NUMBER.fullmatch(str(text)))


def display_name(label, description) -> tuple[str, str]:
    """(name, description) of a point read without channels to match: the label, unless the label is a
    bare number or empty and a description exists (then the description is the name, and no description
    is left)."""
    label = "" if label is None else str(label)
    description = "" if description is None else str(description)
    if description.strip() and (not label.strip() or is_bare_number(label)):
        return description, ""
    return label, description


def name_variants(names: Iterable[str]) -> list[list[str]]:
    """Groups of names that differ only in case or whitespace (sorted, for stable reports)."""
    groups: dict[str, set[str]] = {}
    for name in names:
        groups.setdefault(fold(name), set()).add(name)
    return sorted(sorted(group) for group in groups.values() if len(group) > 1)


@dataclass
class Point:
    """One point of a landmark file: its label and description as written, its position (RAS mm)."""

    label: str
    description: str
    position: np.ndarray
    where: str = ""  # "line 4", "controlPoints[2]", ... for messages

    @property
    def name(self) -> str:
        """The name shown when no channel is known (see display_name)."""
        return display_name(self.label, self.description)[0]

    @property
    def note(self) -> str:
        """The description left over once the name is taken (see display_name)."""
        return display_name(self.label, self.description)[1]

    def shown(self) -> str:
        """How messages cite the point: its name, with the number it was labelled with."""
        if self.name != self.label and self.label.strip():
            return f"'{self.name}' (label {self.label.strip()})"
        return f"'{self.name}'"


@dataclass
class LandmarkNames:
    """The channels points resolve to, with what else names them.

    ``channels``: channel names in order. ``descriptions``: channel -> long name (the plans' and the
    datalist's ``landmark_descriptions``). ``aliases``: channel -> other names (the datalist's
    ``landmark_aliases``). ``numbering``: the number of the first channel when bare-number labels are
    channel numbers (datalist ``landmark_numbering``), else None. ``source`` names where the channels
    come from, for messages (``landmark_names``, ``configs/plans.json``).

    Raises LandmarkDataError (source) when two channels differ only in case/whitespace, and on a
    description or alias that is not a channel's.
    """

    channels: Sequence[str]
    descriptions: Mapping[str, str] = field(default_factory=dict)
    aliases: Mapping[str, Sequence[str]] = field(default_factory=dict)
    numbering: int | None = None
    source: str = "landmark_names"

    def __post_init__(self):
        self.channels = list(self.channels)
        self.descriptions = dict(self.descriptions or {})
        self.aliases = {k: list(v) for k, v in (self.aliases or {}).items()}
        first: dict[str, str] = {}
        for channel in self.channels:
            other = first.setdefault(fold(channel), channel)
            if other != channel:
                raise LandmarkDataError(self.source, f"landmark_names '{other}' and '{channel}' differ only in case/whitespace")
        # key -> channel; a key that two channels claim at the same rank is ambiguous (None) and never matches
        self._keys: dict[str, str | None] = {fold(c): c for c in self.channels}
        for rank in (self.aliases, {c: [d] for c, d in self.descriptions.items() if d and d.strip()}):
            claimed: dict[str, str | None] = {}
            for channel, texts in rank.items():
                resolved = self._keys.get(fold(channel))
                if resolved is None:
                    continue  # a description of a name these channels do not have (e.g. the plans' own)
                for text in texts:
                    key = fold(text)
                    if key and key not in self._keys:
                        claimed[key] = resolved if claimed.get(key, resolved) == resolved else None
            self._keys.update(claimed)

    def channel(self, name: str) -> str | None:
        """The channel one text names (a channel name, alias or description), or None."""
        if is_bare_number(name):
            if self.numbering is None:
                return None
            index = int(name) - self.numbering
            return self.channels[index] if 0 <= index < len(self.channels) else None
        return self._keys.get(fold(name))

    def match(self, label: str, description: str = "") -> tuple[str | None, str | None]:
        """(channel or None, conflict) for a point: the label decides, else the description; conflict is
        a message when label and description name different channels."""
        by_label = self.channel(label) if str(label).strip() else None
        by_description = self.channel(description) if description and str(description).strip() else None
        if by_label and by_description and by_label != by_description:
            return None, f"label '{label}' is {by_label} but description '{description}' is {by_description}"
        return by_label or by_description, None

    def resolve(self, points: Sequence[Point], source, against: str | None = None) -> dict[str, Point]:
        """{channel: point} for the points of one file, in file order.

        Raises LandmarkDataError(source) naming every point that matches no channel (``against`` says
        which: default ``the channels of <self.source>``), two points that match one channel, and
        points whose label and description disagree."""
        resolved: dict[str, Point] = {}
        unknown, problems = [], []
        for point in points:
            channel, conflict = self.match(point.label, point.description)
            if conflict:
                problems.append(f"{point.where + ': ' if point.where else ''}{conflict}")
            elif channel is None:
                unknown.append(point)
            elif channel in resolved:
                other = resolved[channel]
                if other.name == point.name:
                    problems.append(f"duplicate landmark name '{point.name}'")
                elif fold(other.name) == fold(point.name):
                    problems.append(f"landmark '{point.name}' differs only in case/whitespace from '{other.name}': both are '{channel}'")
                else:
                    problems.append(f"landmarks {other.shown()} and {point.shown()} both match '{channel}'")
            else:
                resolved[channel] = point
        if unknown:
            problems.insert(0, unknown_message([p.shown() for p in unknown], against or f"the channels of {self.source}"))
        if problems:
            raise LandmarkDataError(source, "; ".join(problems))
        return resolved


def unknown_message(shown: Sequence[str], against: str) -> str:
    """The one-line sentence for names that match no channel (all of them, never only the first)."""
    hint = ""
    if all(is_bare_number(text.strip("'")) for text in shown):
        hint = " (a bare number is not a name: declare \"landmark_numbering\" beside landmark_names in the datalist)"
    if len(shown) == 1:
        return f"landmark {shown[0]} is not in {against}{hint}"
    return f"{len(shown)} landmarks are not in {against}: {', '.join(shown)}{hint}"


def plans_landmark_names(plans_file) -> LandmarkNames:
    """A trained model's channels: ``configuration.landmark_names`` and ``landmark_descriptions`` of its
    plans.json (written by scripts.plan). Raises LandmarkDataError naming the file when it has none."""
    import json

    from scripts.tables import read_text

    try:
        document = json.loads(read_text(plans_file, "plans file")[0])
    except json.JSONDecodeError as error:
        raise LandmarkDataError(plans_file, f"invalid JSON: {error}") from None
    configuration = document.get("configuration") if isinstance(document, dict) else None
    names = configuration.get("landmark_names") if isinstance(configuration, dict) else None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise LandmarkDataError(plans_file, "no configuration.landmark_names: not a plans.json written by scripts.plan")
    return LandmarkNames(names, configuration.get("landmark_descriptions") or {}, source=str(plans_file))
