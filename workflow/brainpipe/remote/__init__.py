"""Fetch objects from S3-compatible stores (public buckets, loopback test servers).

Every transfer is resumable (``.part`` files continued with HTTP ``Range``),
verified (size, and the MD5 behind the ETag where the ETag is one), retried
with exponential backoff, parallel (a thread pool), atomic (temporary name,
then rename) and recorded in a manifest. Remote keys are mapped to local paths
that can never leave the destination folder.

>>> store = S3Source(bucket="natural-scenes-dataset", anonymous=True)  # doctest: +SKIP
>>> fetch_objects(store, ["nsddata/experiments/nsd/nsd_expdesign.mat"], "data")  # doctest: +SKIP
"""

from brainpipe.remote.errors import RemoteAccessError, RemoteIntegrityError, UnsafeKeyError
from brainpipe.remote.fetch import (
    WORKERS,
    ByteSink,
    FetchResult,
    fetch_object,
    fetch_objects,
    read_manifest,
    record_fetches,
)
from brainpipe.remote.keys import safe_local_path
from brainpipe.remote.rangefile import RangeFile
from brainpipe.remote.source import ObjectInfo, S3Source

__all__ = [
    "WORKERS",
    "ByteSink",
    "FetchResult",
    "ObjectInfo",
    "RangeFile",
    "RemoteAccessError",
    "RemoteIntegrityError",
    "S3Source",
    "UnsafeKeyError",
    "fetch_object",
    "fetch_objects",
    "read_manifest",
    "record_fetches",
    "safe_local_path",
]
