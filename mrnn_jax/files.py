"""Writing files so that no reader ever sees half of one."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any

from mrnn_jax.errors import MrnnError


def write_text_atomic(path: str | os.PathLike[str], text: str, what: str = "file") -> None:
    """Writes ``text`` to ``path`` through a synced temporary file in the same folder, then
    renames it into place (readable by all, 0644). Parent folders are created. On failure
    the old file, if any, is left as it was, no temporary file remains, and an ``OSError``
    becomes :class:`MrnnError` naming the path and ``what`` was being written."""
    write_bytes_atomic(path, text.encode("utf-8"), what)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, what: str = "file") -> None:
    """Like :func:`write_text_atomic`, for bytes."""
    target = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(target))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            dir=directory, prefix=f".{os.path.basename(target)}.", suffix=".tmp"
        )
    except OSError as e:
        raise MrnnError(f"{target}: cannot write the {what} ({e.strerror or e})") from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise MrnnError(f"{target}: cannot write the {what} ({e.strerror or e})") from e
        raise


def write_json_atomic(path: str | os.PathLike[str], data: Any, what: str = "file") -> None:
    """:func:`write_text_atomic` of ``data`` as indented JSON (keys sorted, UTF-8 kept)."""
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    write_text_atomic(path, text, what)
