"""An S3-compatible object source: the bucket, the endpoint and how to sign requests."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from brainpipe.remote.errors import RemoteAccessError

#: botocore errors that mean "could not talk to the server" (retryable, then "offline").
_OFFLINE_ERRORS = (
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ConnectionClosedError",
    "ReadTimeoutError",
    "ResponseStreamingError",
    "IncompleteReadError",
    "ProxyConnectionError",
    "ConnectionError",
    "SSLError",
)


@dataclass(frozen=True)
class ObjectInfo:
    """What the server says about one object."""

    key: str
    size: int  # bytes
    etag: str  # without quotes; "<md5>" for single-part uploads, "<md5>-<n>" for multipart


_CLIENTS: dict[tuple, Any] = {}
_CLIENTS_LOCK = threading.Lock()


def _make_client(
    endpoint_url: str | None,
    anonymous: bool,
    region: str,
    connect_timeout: float,
    read_timeout: float,
) -> Any:
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    cfg = Config(
        signature_version=UNSIGNED if anonymous else None,
        retries={"max_attempts": 1, "mode": "standard"},  # we retry ourselves
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_pool_connections=32,
        s3={"addressing_style": "path"},
    )
    kwargs: dict[str, Any] = {"region_name": region, "config": cfg}
    if endpoint_url:
        kwargs["endpoint_url"] = endpoint_url
    return boto3.session.Session().client("s3", **kwargs)


@dataclass
class S3Source:
    """A bucket on an S3-compatible server.

    Parameters
    ----------
    bucket : str
        Bucket name (``natural-scenes-dataset``, ``openneuro.org``).
    endpoint_url : str, optional
        Server URL; ``None`` is AWS. Tests point this at a loopback server.
    anonymous : bool
        Send unsigned requests (public buckets need no credentials).
    region : str
        Region name sent to the server.
    connect_timeout, read_timeout : float
        Seconds before a connection attempt or a stalled read counts as failed.
    """

    bucket: str
    endpoint_url: str | None = None
    anonymous: bool = True
    region: str = "us-east-1"
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    _client: Any = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @classmethod
    def from_config(cls, block: dict[str, Any]) -> S3Source:
        """Build from a ``source`` block (keys: bucket, endpoint_url, anonymous, region)."""
        return cls(
            bucket=block["bucket"],
            endpoint_url=block.get("endpoint_url"),
            anonymous=bool(block.get("anonymous", True)),
            region=block.get("region", "us-east-1"),
        )

    @property
    def client(self) -> Any:
        """A boto3 S3 client (thread-safe; created lazily: nothing connects before use).

        Sources with the same endpoint and settings share one client per process:
        building one loads botocore's service model (~0.25 s), which a job fetching
        session after session would otherwise pay for every file.
        """
        with self._lock:
            if self._client is None:
                key = (
                    self.endpoint_url, self.anonymous, self.region,
                    self.connect_timeout, self.read_timeout,
                )  # fmt: skip
                with _CLIENTS_LOCK:
                    if key not in _CLIENTS:
                        _CLIENTS[key] = _make_client(*key)
                    self._client = _CLIENTS[key]
            return self._client

    def url(self, key: str) -> str:
        """Human-readable address of ``key`` for messages."""
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"s3://{self.bucket}/{key}{where}"

    def head(self, key: str) -> ObjectInfo:
        """Size and ETag of ``key``."""
        try:
            meta = self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as err:  # noqa: BLE001 - translated below
            raise self.translate(err, key) from err
        return ObjectInfo(key, int(meta["ContentLength"]), meta.get("ETag", "").strip('"'))

    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (all pages)."""
        out: list[ObjectInfo] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    out.append(ObjectInfo(obj["Key"], int(obj["Size"]), obj["ETag"].strip('"')))
        except Exception as err:  # noqa: BLE001 - translated below
            raise self.translate(err, prefix) from err
        return out

    def get(self, key: str, start: int = 0, end: int | None = None, etag: str | None = None):
        """Open a streaming body for bytes ``[start, end)`` of ``key``.

        ``etag`` makes the request conditional (``If-Match``), so a resumed
        transfer never splices two versions of an object together.
        """
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if start or end is not None:  # a whole object is a plain GET (some servers slice slowly)
            kwargs["Range"] = f"bytes={start}-" if end is None else f"bytes={start}-{end - 1}"
        if etag:
            kwargs["IfMatch"] = f'"{etag}"'
        return self.client.get_object(**kwargs)["Body"]

    def translate(self, err: Exception, key: str) -> Exception:
        """Turn a botocore error into a :class:`RemoteAccessError` that says what to do."""
        url = self.url(key)
        name = type(err).__name__
        code = ""
        response = getattr(err, "response", None)
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
        if code in ("403", "AccessDenied", "Forbidden", "AllAccessDisabled"):
            return RemoteAccessError(
                url,
                "access denied",
                "The bucket must be public (source.anonymous: true) or your AWS credentials "
                "must grant s3:GetObject; or place the file there yourself under the data folder.",
            )
        if code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket"):
            return RemoteAccessError(
                url,
                "no such object",
                "Check the dataset's subjects/sessions/space in the config, "
                "and source.bucket / source.endpoint_url.",
            )
        if name in _OFFLINE_ERRORS or isinstance(err, ConnectionError | TimeoutError):
            return RemoteAccessError(
                url,
                f"cannot reach the server ({name})",
                "You seem to be offline or the endpoint is wrong: check the network and "
                "source.endpoint_url, or copy the file there by hand and rerun.",
            )
        return RemoteAccessError(url, f"{name}: {err}", "Rerun; if it persists, report it.")


def is_retryable(err: Exception) -> bool:
    """Whether ``err`` is a transient transfer error worth retrying."""
    name = type(err).__name__
    if name in _OFFLINE_ERRORS or isinstance(err, ConnectionError | TimeoutError | OSError):
        return not isinstance(err, RemoteAccessError) or "cannot reach" in str(err)
    code = ""
    response = getattr(err, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if status >= 500 or code in ("SlowDown", "RequestTimeout", "InternalError"):
            return True
    return name in ("FlexibleChecksumError", "ProtocolError", "ChunkedEncodingError")
