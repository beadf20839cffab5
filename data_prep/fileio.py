"""Generic file IO shared by every room: atomic writes, "is that process alive", "can this be written".

Atomic writes go to a temp file in the target's own directory (so the final rename never crosses a
filesystem), are fsynced, then ``os.replace``d over the target: a kill or a full disk leaves either
the old file or the new one under the target's name, never a partial one. Temp files are named
``.<name>.tmp-<pid>`` (:func:`temp_path`; :func:`parse_temp` reads the name back), temp folders
``<name>.tmp-<pid>``; any exception, KeyboardInterrupt included, removes them (only a kill -9 leaves
one behind, for the writer's own cleanup to find by its dead pid).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Literal

#: marks a temp file or folder: ``.<name>.tmp-<pid>`` / ``<name>.tmp-<pid>`` beside its target
TMP_MARK = ".tmp-"
_TEMP_FILE = re.compile(r"^\.(.+)\.tmp-([0-9]+)$")

PathLike = str | os.PathLike


def temp_path(path: PathLike) -> Path:
    """Where :func:`atomic_write` puts ``path``'s content first: ``.<name>.tmp-<pid>`` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


def parse_temp(path: PathLike) -> tuple[Path, int] | None:
    """``(target, writer pid)`` if ``path`` is named like a :func:`temp_path`, else None."""
    path = Path(path)
    m = _TEMP_FILE.match(path.name)
    return (path.with_name(m.group(1)), int(m.group(2))) if m else None


def fsync_dir(directory: PathLike) -> None:
    """Flush a folder's entries (a rename into it) to disk; silently nothing where that is unsupported."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: Literal["wb", "w"] = "wb", *, fsync: bool = True) -> Iterator[IO]:
    """Open :func:`temp_path` of ``path`` for writing (``"w"``: UTF-8 text) and yield it; when the block
    ends without error, fsync it (unless ``fsync=False``) and rename it over ``path``.

    Missing parent folders are made. On any exception (KeyboardInterrupt included) the temp file is
    removed and ``path`` is left as it was.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if fsync:
        fsync_dir(path.parent)


def write_bytes_atomic(path: PathLike, data: bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` with :func:`atomic_write`; return ``path``."""
    with atomic_write(path, "wb", fsync=fsync) as f:
        f.write(data)
    return Path(path)


def write_text_atomic(path: PathLike, text: str, *, fsync: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` with :func:`atomic_write`; return ``path``."""
    with atomic_write(path, "w", fsync=fsync) as f:
        f.write(text)
    return Path(path)


def write_json_atomic(path: PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON (indent 2, sorted keys, final newline: the one format) with :func:`atomic_write`."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_dir(path: PathLike) -> Iterator[Path]:
    """Yield the temp folder path ``<name>.tmp-<pid>`` beside ``path`` (absent: the block makes the folder
    there); rename that folder to ``path`` when the block ends without error.

    The rename raises OSError if ``path`` exists and is not empty (e.g. another process finished the same
    folder first). The temp folder is removed in every case: renamed, failed or interrupted.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)  # a leftover of an earlier process with our pid
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """True if a process with this id exists on this machine (this one included), or we cannot tell."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OverflowError, ValueError):
        return False  # no such pid can exist
    except OSError:
        return True  # e.g. EPERM: it exists, owned by someone else
    return True


class OutDirError(ValueError):
    """An output location that cannot be used (not writable, or would replace files we did not write)."""


def writable_problem(path: PathLike, is_dir: bool = False) -> str | None:
    """Why ``path`` (a file, or a folder if ``is_dir``) cannot be written, or None if it can.

    Leaves nothing behind: probes with a temp file in the folder the output goes to or, if that
    does not exist yet, in its nearest existing ancestor (where the missing folders would be made).
    """
    path = Path(path)
    if is_dir and path.exists() and not path.is_dir():
        return "it exists and is not a directory"
    if not is_dir and path.is_dir():
        return "it is a directory; give a file path"
    probe = path if is_dir else path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a directory"
    try:
        fd, tmp = tempfile.mkstemp(prefix=".write-test-", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        return f"a test file in {probe} failed ({e.strerror or e})"
    return None


def check_writable(path: PathLike, flag: str = "--out", is_dir: bool = False) -> Path:
    """``path`` if it can be written (:func:`writable_problem`), else OutDirError naming ``flag``."""
    problem = writable_problem(path, is_dir)
    if problem:
        raise OutDirError(f"{flag} {path} cannot be written: {problem}")
    return Path(path)
