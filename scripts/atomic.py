"""Atomic file writes: a temp file in the target's folder, flushed to disk, then ``os.replace``d over the
target, so a reader never sees half a file and an interrupted write leaves the old file (or nothing) and no
temp file behind. Every file the bundle writes (landmarks, datalists, configs, metrics, weights' sidecars)
goes through here (DESIGN §3)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path, data: bytes) -> None:
    """Write bytes through a temp file in the same folder and os.replace; nothing is left behind on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as temp:
            temp.write(data)
            temp.flush()
            os.fsync(temp.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp_name, 0o666 & ~umask)  # mkstemp makes 0600 files
        os.replace(temp_name, path)
    except BaseException:
        if os.path.exists(temp_name):
            os.unlink(temp_name)
        raise


def atomic_write_text(path, text: str) -> None:
    """UTF-8 text, written atomically (see atomic_write_bytes)."""
    if not isinstance(text, str):
        raise TypeError(f"atomic_write_text needs str, got {type(text).__name__}")
    atomic_write_bytes(path, text.encode("utf-8"))
