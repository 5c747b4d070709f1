"""Errors of remote access, each naming the object and what to do about it."""

from __future__ import annotations


class RemoteAccessError(OSError):
    """An object could not be listed or fetched (offline, access denied, missing).

    The message names the object URL, the cause and what the user can do.
    """

    def __init__(self, url: str, problem: str, advice: str) -> None:
        self.url = url
        self.problem = problem
        self.advice = advice
        super().__init__(f"{url}: {problem}. {advice}")


class RemoteIntegrityError(RemoteAccessError):
    """A fetched object failed verification (size or checksum) on every attempt."""


class UnsafeKeyError(ValueError):
    """A remote key would map to a path outside the destination folder."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        super().__init__(f"refusing remote key {key!r}: {problem}")
