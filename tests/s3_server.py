"""Loopback S3 servers for tests: moto's real HTTP server, and a proxy that misbehaves.

Nothing here mocks brainpipe: the code under test talks HTTP to a server on
127.0.0.1 exactly as it talks to AWS.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import boto3
from botocore.config import Config


@contextmanager
def moto_server() -> Iterator[str]:
    """Start moto's S3 server on a free loopback port; yield its endpoint URL.

    moto keeps one store per process: servers running at the same time share their
    buckets (give each its own bucket, see :func:`serve_tree`), and the store is
    emptied when a server stops, so no test sees objects another one uploaded.
    """
    import logging
    import urllib.request

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        yield endpoint
    finally:
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"))
        server.stop()


def admin_client(endpoint: str):
    """A signed client (moto accepts any credentials) to create buckets and upload fixtures."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(s3={"addressing_style": "path"}),
    )


def make_public_bucket(client, bucket: str) -> None:
    """Create ``bucket`` and let anyone list it (like ``natural-scenes-dataset``)."""
    client.create_bucket(Bucket=bucket)
    client.put_bucket_acl(Bucket=bucket, ACL="public-read")


def upload(client, bucket: str, key: str, body: bytes, public: bool = True) -> None:
    """Put one object; ``public`` objects can be read anonymously, others answer 403."""
    client.put_object(Bucket=bucket, Key=key, Body=body, ACL="public-read" if public else "private")


def upload_tree(client, bucket: str, root, prefix: str = "") -> list[str]:
    """Upload every file under ``root`` (publicly) as ``prefix + relative path``; return keys."""
    from pathlib import Path

    keys = []
    for path in sorted(Path(root).rglob("*")):
        if path.is_file():
            key = prefix + path.relative_to(root).as_posix()
            upload(client, bucket, key, path.read_bytes())
            keys.append(key)
    return keys


class FlakyProxy:
    """A TCP proxy in front of a server that breaks responses on purpose.

    Parameters
    ----------
    upstream : str
        ``http://host:port`` of the real server.
    drop_after : int, optional
        Close a connection once this many response bytes have passed, for the
        first ``drops`` connections that get that far.
    drops : int
        How many connections to break that way.
    corrupt_at : int, optional
        Flip one byte at this offset of the response body (after the headers)
        for the first ``corruptions`` responses long enough to have it.
    corruptions : int
        How many responses to corrupt.
    """

    def __init__(
        self, upstream: str, drop_after: int | None = None, drops: int = 0,
        corrupt_at: int | None = None, corruptions: int = 0,
    ) -> None:  # fmt: skip
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.drop_after, self.drops_left = drop_after, drops
        self.corrupt_at, self.corruptions_left = corrupt_at, corruptions
        self.dropped = self.corrupted = 0
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FlakyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        server = socket.create_connection(self.upstream)

        def upstream() -> None:
            try:
                while data := client.recv(65536):
                    server.sendall(data)
            except OSError:
                pass
            finally:
                try:
                    server.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

        threading.Thread(target=upstream, daemon=True).start()
        sent = 0
        body_start = None
        head = b""
        try:
            while data := server.recv(65536):
                if body_start is None:
                    head += data
                    end = head.find(b"\r\n\r\n")
                    if end >= 0:
                        body_start = sent + (end + 4) - (len(head) - len(data))
                if self.corrupt_at is not None and body_start is not None:
                    pos = body_start + self.corrupt_at - sent
                    if 0 <= pos < len(data):
                        with self._lock:
                            if self.corruptions_left > 0:
                                self.corruptions_left -= 1
                                self.corrupted += 1
                                data = data[:pos] + bytes([data[pos] ^ 0xFF]) + data[pos + 1 :]
                if self.drop_after is not None and sent + len(data) > self.drop_after:
                    with self._lock:
                        drop = self.drops_left > 0
                        if drop:
                            self.drops_left -= 1
                            self.dropped += 1
                    if drop:
                        client.sendall(data[: max(0, self.drop_after - sent)])
                        break
                client.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for s in (client, server):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()


@contextmanager
def serve_tree(root, bucket: str) -> Iterator[str]:
    """A moto server with every file under ``root`` in the public ``bucket``; yields its URL."""
    with moto_server() as endpoint:
        publish_tree(endpoint, bucket, root)
        yield endpoint


def publish_tree(endpoint: str, bucket: str, root) -> None:
    """Every file under ``root`` into a new public ``bucket`` of the server at ``endpoint``."""
    client = admin_client(endpoint)
    make_public_bucket(client, bucket)
    upload_tree(client, bucket, root)
