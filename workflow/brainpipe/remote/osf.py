"""Files of an OSF project component over HTTP, for :func:`brainpipe.remote.fetch_objects`.

OSF (osf.io) serves a component's files through its JSON API: ``GET
{api_url}/nodes/{node}/files/{provider}/`` lists the top folder (paged, ``links.next``);
each entry has ``attributes.kind`` (``file`` / ``folder``), ``attributes.materialized_path``
(``/sub-01/ses-01/raw_eeg_training.npy``), ``attributes.size``,
``attributes.extra.hashes.md5`` and ``links.download``; a folder's contents are at
``relationships.files.links.related.href``. Downloads are plain HTTP GETs that honour
``Range``.

A component may keep its files in more than one storage provider: THINGS-EEG2's raw
recordings (component ``crxs4``) are per-subject archives on its figshare add-on, beside a
description on ``osfstorage`` (as Meta's neuralset downloads them: storage indices 0 and 2
of that component). ``GET {api_url}/nodes/{node}/files/`` lists the providers, each a
folder entry whose ``relationships.files.links.related.href`` is its top folder; by default
every provider is walked.

:class:`OsfSource` offers the interface :func:`brainpipe.remote.fetch_object` uses
(``list``, ``head``, ``get``, ``url``, ``translate``, ``bucket``), with the MD5 the API
publishes as the object's ETag, so every download is resumed with ``Range``, checked
against that MD5 and renamed into place like every S3 download.
"""

from __future__ import annotations

import http.client
import json
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from brainpipe.remote.errors import RemoteAccessError
from brainpipe.remote.source import ObjectInfo


class _Body:
    """A streaming response with botocore's ``iter_chunks`` interface."""

    def __init__(self, response: Any) -> None:
        self._response = response
        length = response.headers.get("Content-Length")
        self._expected = int(length) if length is not None else None

    def iter_chunks(self, size: int):
        got = 0
        try:
            while True:
                try:
                    chunk = self._response.read(size)
                except http.client.HTTPException as err:  # IncompleteRead and kin
                    raise ConnectionError(f"transfer broke after {got} bytes ({err!r})") from err
                if not chunk:
                    break
                got += len(chunk)
                yield chunk
        finally:
            self._response.close()
        if self._expected is not None and got < self._expected:
            # a dropped connection: the caller resumes from what it has with Range
            raise ConnectionError(f"connection closed after {got} of {self._expected} bytes")


@dataclass
class OsfSource:
    """One OSF component's storage.

    Parameters
    ----------
    node : str
        The component's id (``crxs4``).
    api_url : str
        The API root (tests point it at a loopback server).
    provider : str or None
        One storage provider (``osfstorage``, ``figshare``), or None (default) for every
        provider the component has.
    timeout : float
        Seconds before a connection or a stalled read fails.
    """

    node: str
    api_url: str = "https://api.osf.io/v2"
    provider: str | None = None
    timeout: float = 60.0
    _links: dict[str, str] = field(default_factory=dict, init=False, repr=False)
    _infos: dict[str, ObjectInfo] = field(default_factory=dict, init=False, repr=False)
    _providers: dict[str, str] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def bucket(self) -> str:
        return f"osf:{self.node}"

    def url(self, key: str) -> str:
        with self._lock:
            provider = self._providers.get(key, self.provider)
        if provider is None:
            return f"{self.api_url}/nodes/{self.node}/files/{key}"
        return f"{self.api_url}/nodes/{self.node}/files/{provider}/{key}"

    def _provider_roots(self) -> list[tuple[str, str]]:
        """``(provider, top-folder URL)`` for the configured provider or for every one."""
        if self.provider is not None:
            return [(self.provider, f"{self.api_url}/nodes/{self.node}/files/{self.provider}/")]
        roots: list[tuple[str, str]] = []
        url: str | None = f"{self.api_url}/nodes/{self.node}/files/"
        while url:
            page = self._get_json(url)
            for item in page.get("data", []):
                attrs = item.get("attributes", {})
                name = str(attrs.get("provider") or attrs.get("name") or "")
                related = item["relationships"]["files"]["links"]["related"]
                roots.append((name, related["href"] if isinstance(related, dict) else related))
            url = (page.get("links") or {}).get("next")
        return roots

    def _get_json(self, url: str) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except (urllib.error.URLError, OSError, json.JSONDecodeError) as err:
            raise self.translate(err, url) from err

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every file under ``prefix`` (a path without leading slash), walking folders."""
        out: list[ObjectInfo] = []
        seen: dict[str, str] = {}  # key -> provider, to refuse one path in two providers
        pending = self._provider_roots()
        while pending:
            provider, root = pending.pop()
            url: str | None = root
            while url:
                page = self._get_json(url)
                for item in page.get("data", []):
                    attrs = item.get("attributes", {})
                    path = str(attrs.get("materialized_path", "")).lstrip("/")
                    if attrs.get("kind") == "folder":
                        if path.startswith(prefix) or prefix.startswith(path):
                            related = item["relationships"]["files"]["links"]["related"]
                            href = related["href"] if isinstance(related, dict) else related
                            pending.append((provider, href))
                        continue
                    if not path.startswith(prefix):
                        continue
                    if path in seen:
                        raise RemoteAccessError(
                            self.url(path),
                            f"the file is in two storage providers ({seen[path]}, {provider})",
                            "Set source.provider in the registry entry to the one to read.",
                        )
                    seen[path] = provider
                    md5 = ((attrs.get("extra") or {}).get("hashes") or {}).get("md5") or ""
                    info = ObjectInfo(path, int(attrs["size"]), str(md5))
                    with self._lock:
                        self._links[path] = item["links"]["download"]
                        self._infos[path] = info
                        self._providers[path] = provider
                    out.append(info)
                url = (page.get("links") or {}).get("next")
        return sorted(out, key=lambda o: o.key)

    def head(self, key: str) -> ObjectInfo:
        with self._lock:
            known = self._infos.get(key)
        if known is None:
            folder = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
            self.list(folder)
            with self._lock:
                known = self._infos.get(key)
        if known is None:
            raise RemoteAccessError(self.url(key), "no such object", "Check the registry entry.")
        return known

    def get(self, key: str, start: int = 0, end: int | None = None, etag: str | None = None):
        """Stream bytes ``[start, end)``; ``etag`` (the MD5) is checked after the transfer."""
        with self._lock:
            link = self._links.get(key)
        if link is None:
            self.head(key)
            link = self._links[key]
        request = urllib.request.Request(link)
        if start or end is not None:
            request.add_header("Range", f"bytes={start}-" + ("" if end is None else str(end - 1)))
        response = urllib.request.urlopen(request, timeout=self.timeout)
        if start and response.status != 206:
            response.close()
            raise ConnectionError(f"{link}: server ignored the Range request")
        return _Body(response)

    def translate(self, err: Exception, key: str) -> Exception:
        url = key if key.startswith("http") else self.url(key)
        code = getattr(err, "code", None)
        if code in (401, 403):
            return RemoteAccessError(url, "access denied", "The OSF component must be public.")
        if code == 404:
            return RemoteAccessError(url, "no such object", "Check source.node in the registry.")
        if isinstance(err, urllib.error.URLError | ConnectionError | TimeoutError | OSError):
            return RemoteAccessError(
                url,
                f"cannot reach the server ({type(err).__name__})",
                "You seem to be offline or source.api_url is wrong: check the network, or "
                "copy the files there by hand and rerun.",
            )
        return RemoteAccessError(
            url, f"{type(err).__name__}: {err}", "Rerun; if it persists, report it."
        )
