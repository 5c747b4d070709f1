"""Map remote object keys to local paths that can never leave the destination folder."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from brainpipe.remote.errors import UnsafeKeyError


def safe_local_path(root: str | os.PathLike, key: str) -> Path:
    """Local path of object ``key`` under ``root``.

    Keys are POSIX paths relative to the bucket (or a prefix). A key is refused
    if it is empty, absolute, contains ``..``, ``.`` or empty components, a
    backslash, a NUL byte or a drive letter, or if — after resolving symlinks
    already inside ``root`` — it would land outside ``root``.

    Parameters
    ----------
    root : path
        Destination folder.
    key : str
        Remote object key, e.g. ``"nsddata/experiments/nsd/nsd_expdesign.mat"``.

    Returns
    -------
    Path
        ``root / key`` (not resolved).

    Raises
    ------
    UnsafeKeyError
        For any key that is not a plain relative path below ``root``.
    """
    if not isinstance(key, str) or not key:
        raise UnsafeKeyError(str(key), "empty key")
    if "\x00" in key or "\\" in key:
        raise UnsafeKeyError(key, "contains a NUL byte or a backslash")
    pure = PurePosixPath(key)
    if pure.is_absolute() or key.startswith("/"):
        raise UnsafeKeyError(key, "absolute keys are not allowed")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise UnsafeKeyError(key, "'..', '.' and empty path components are not allowed")
    if len(parts[0]) >= 2 and parts[0][1] == ":":
        raise UnsafeKeyError(key, "drive letters are not allowed")
    root = Path(root)
    path = root.joinpath(*parts)
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if os.path.commonpath([real_root, real]) != real_root:
        raise UnsafeKeyError(key, f"resolves outside {root}")
    return path
