"""Delimited text tables as spreadsheets and Slicer write them: the one reader behind the landmark .csv
format and ``import_data --format table``.

- Encoding: UTF-8 with or without a byte-order mark (Excel's "CSV UTF-8" starts with EF BB BF); a file
  that is not UTF-8 is read as Windows-1252 (Excel's "CSV" in Western locales).
- Delimiter: comma, semicolon or tab, sniffed from the first non-empty line (the one with most of them
  outside quotes; a comma when there is none). With a semicolon or tab delimiter a decimal comma
  (``12,5``) is a decimal point (German/French Excel).
- Coordinate columns, read by the header (case ignored): ``x,y,z`` (RAS unless the caller says otherwise),
  ``r,a,s`` (RAS) or ``l,p,s`` (LPS), as 3D Slicer's Markups > Export to table writes them
  (``label,l,p,s,defined,selected,visible,locked,description``).
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

from scripts.errors import LandmarkDataError

DELIMITERS = (",", ";", "\t")
COORDINATE_COLUMNS = {("x", "y", "z"): None, ("r", "a", "s"): "RAS", ("l", "p", "s"): "LPS"}
_DECIMAL_COMMA = re.compile(r"\s*[+-]?(\d+,\d*|,\d+)([eE][+-]?\d+)?\s*")
_DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab"}


@dataclass
class Table:
    """Rows of a delimited file: ``rows`` are (line number, cells); ``delimiter`` as sniffed."""

    path: Path
    rows: list[tuple[int, list[str]]]
    delimiter: str
    encoding: str

    @property
    def delimiter_name(self) -> str:
        return _DELIMITER_NAMES[self.delimiter]

    def number(self, text, where: str) -> float:
        """A float from a cell, reading a decimal comma when the delimiter is not a comma.
        Raises LandmarkDataError naming the file and ``where``."""
        value = str(text).strip() if text is not None else ""
        if self.delimiter != "," and _DECIMAL_COMMA.fullmatch(value):
            value = value.replace(",", ".")
        try:
            return float(value)
        except ValueError:
            raise LandmarkDataError(self.path, f"{where}: cannot parse number {text!r}") from None


def read_text(path, what: str = "file") -> tuple[str, str]:
    """(text, encoding) of a text file: UTF-8 (byte-order mark dropped), else Windows-1252.
    Raises LandmarkDataError for a missing file, a folder, or a file that is neither."""
    path = Path(path)
    if not path.exists():
        raise LandmarkDataError(path, f"{what} not found")
    if path.is_dir():
        raise LandmarkDataError(path, f"is a folder, not a {what}")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise LandmarkDataError(path, f"cannot read: {error.strerror or error}") from None
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252"), "cp1252"
    except UnicodeDecodeError:
        raise LandmarkDataError(path, "not text (neither UTF-8 nor Windows-1252)") from None


def sniff_delimiter(line: str) -> str:
    """The delimiter of a header (or first) line: the candidate found most often outside quotes."""
    counts = dict.fromkeys(DELIMITERS, 0)
    quoted = False
    for char in line:
        if char == '"':
            quoted = not quoted
        elif not quoted and char in counts:
            counts[char] += 1
    best = max(DELIMITERS, key=lambda d: counts[d])  # ties keep the comma (first)
    return best if counts[best] else ","


def read_table(path, what: str = "table") -> Table:
    """Every non-empty row of a delimited text file, with its line number (1-based).
    Raises LandmarkDataError (path) when the file cannot be read as text."""
    path = Path(path)
    text, encoding = read_text(path, what)
    first = next((line for line in text.splitlines() if line.strip()), "")
    delimiter = sniff_delimiter(first)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows = []
    try:
        for row in reader:
            if any(cell.strip() for cell in row):
                rows.append((reader.line_num, [cell.strip() for cell in row]))
    except csv.Error as error:
        raise LandmarkDataError(path, f"line {reader.line_num}: {error}") from None
    return Table(path, rows, delimiter, encoding)


def coordinate_columns(header) -> tuple[tuple[str, str, str], str | None] | None:
    """((column, column, column), system) for a header's coordinate columns: ``x,y,z`` (system None: the
    caller's default), ``r,a,s`` (RAS) or ``l,p,s`` (LPS); None when it has none of these."""
    columns = {str(cell).strip().lower() for cell in header}
    for names, system in COORDINATE_COLUMNS.items():
        if set(names) <= columns:
            return names, system
    return None
