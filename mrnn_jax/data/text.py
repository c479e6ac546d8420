"""Reading the text files datasets ship, whatever their encoding, line endings and stray
whitespace; and the one error for a missing file, which says where to get it."""

from __future__ import annotations

import json
import os

from mrnn_jax.data.download import instructions
from mrnn_jax.data.records import DataReport
from mrnn_jax.errors import MrnnError

BOM = "\ufeff"


def decode_line(raw: bytes) -> tuple[str, bool]:
    """``(text, was_latin1)``: UTF-8 if the bytes are UTF-8, else Windows-1252 / Latin-1."""
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        try:
            return raw.decode("cp1252"), True
        except UnicodeDecodeError:  # the five bytes cp1252 leaves undefined
            return raw.decode("latin-1"), True


def read_lines(path: str, report: DataReport | None = None) -> list[tuple[int, str]]:
    """``(line number, text)`` of every non-blank line of ``path``, stripped of whitespace.

    Each line is decoded on its own (files mixing UTF-8 and Latin-1 lines exist); a UTF-8 byte
    order mark, Windows line endings and surrounding spaces and tabs are removed. Lines read
    as Latin-1 are counted in ``report``.
    """
    with open(path, "rb") as f:
        data = f.read()
    lines = []
    data = data.removeprefix(BOM.encode("utf-8"))  # before decoding: line 1 may be Latin-1
    for number, raw in enumerate(data.splitlines(), start=1):
        text, latin1 = decode_line(raw)
        text = text.strip()
        if latin1 and report is not None:
            report.note("lines read as Latin-1", f"{path}:{number}")
        if text:
            lines.append((number, text))
    return lines


def read_text(path: str, report: DataReport | None = None) -> str:
    """The whole of ``path`` as text (UTF-8, else Latin-1, counted), without a byte order mark."""
    with open(path, "rb") as f:
        data = f.read()
    text, latin1 = decode_line(data.removeprefix(BOM.encode("utf-8")))
    if latin1 and report is not None:
        report.note("files read as Latin-1", path)
    return text


def read_json(path: str) -> object:
    """Parsed JSON of ``path``; a syntax error names the file, line and column."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as error:
        raise MrnnError(
            f"{path}:{error.lineno}:{error.colno}: not valid JSON ({error.msg})"
        ) from None


def require(path: str, dataset: str, what: str = "file") -> str:
    """``path`` if it exists, else an error naming it and saying where to get ``dataset``."""
    return find_first(dataset, [path], what)


def find_first(dataset: str, candidates: list[str], what: str = "file") -> str:
    """The first of ``candidates`` that exists, else the missing-file error for the first."""
    for path in candidates:
        if (os.path.isdir if what == "folder" else os.path.isfile)(path):
            return path
    others = "" if len(candidates) == 1 else f" (also looked for {', '.join(candidates[1:])})"
    raise MrnnError(
        f"{candidates[0]}: no such {what} for dataset {dataset!r}{others}.\n{instructions(dataset)}"
    )


def resolve(data_dir: str, path: str) -> str:
    """``path`` as given if absolute; a relative one under ``data_dir`` if there, else from
    the working directory if there, else (for the missing-file error) under ``data_dir``."""
    if not path or os.path.isabs(path):
        return path
    inside = os.path.join(data_dir, path)
    if os.path.exists(inside) or not os.path.exists(path):
        return inside
    return path
