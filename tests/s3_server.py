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


def write_nsd_tree(
    root,
    subjects=("01",),
    sessions=("01", "02"),
    shape=(6, 7, 5),
    n_images=300,
    n_shared=30,
    image_size=8,
    seed=0,
    space="func1pt8mm",
    version="betas_fithrf_GLMdenoise_RR",
    betas_layout="chunked",
) -> dict:
    """Write a tiny NSD in the bucket's real key layout and file formats under ``root``.

    Real formats, tiny sizes: ``nsd_expdesign.mat`` (MATLAB v5 via scipy.io,
    1-based ``masterordering`` 1×30000, ``subjectim`` 8×10000, ``sharedix``),
    betas HDF5 ``/betas`` int16 (750, K, J, I) = NIfTI axes reversed, ×300;
    NIfTI brain mask, ROI label volumes and ncsnr; ``/imgBrick`` (n, H, W, 3)
    uint8. ``betas_layout``: ``"chunked"`` (one trial per chunk) or ``"contiguous"``.
    Returns the ground truth (float betas in NIfTI order, etc.).
    """
    from pathlib import Path

    import h5py
    import nibabel as nib
    import numpy as np
    import pandas as pd
    import scipy.io

    rng = np.random.default_rng(seed)
    root = Path(root)
    exp = root / "nsddata/experiments/nsd"
    exp.mkdir(parents=True, exist_ok=True)
    shared = rng.choice(n_images, n_shared, replace=False)
    subjectim = np.empty((8, 10000), dtype=np.int64)
    others = np.setdiff1d(np.arange(n_images), shared)
    for s in range(8):
        subjectim[s] = np.concatenate([shared, rng.choice(others, 10000 - n_shared)])
    masterordering = rng.integers(0, 10000, 30000)
    masterordering[:n_shared] = np.arange(n_shared)  # every shared image early in session 1
    scipy.io.savemat(
        exp / "nsd_expdesign.mat",
        {
            "masterordering": (masterordering + 1)[None, :].astype(np.float64),
            "subjectim": (subjectim + 1).astype(np.float64),
            "sharedix": np.sort(shared + 1)[None, :].astype(np.float64),
        },
    )
    pd.DataFrame(
        {"nsdId": np.arange(n_images), "cocoId": rng.integers(1, 500000, n_images),
         "shared1000": np.isin(np.arange(n_images), shared)}
    ).to_csv(exp / "nsd_stim_info_merged.csv")  # fmt: skip
    stim = root / "nsddata_stimuli/stimuli/nsd"
    stim.mkdir(parents=True, exist_ok=True)
    images = rng.integers(0, 256, (n_images, image_size, image_size, 3), dtype=np.uint8)
    with h5py.File(stim / "nsd_stimuli.hdf5", "w") as h5:
        h5.create_dataset("imgBrick", data=images, chunks=(1, image_size, image_size, 3))
    affine = np.diag([1.8, 1.8, 1.8, 1.0])
    affine[:3, 3] = -np.array(shape) * 0.9
    truth = {"images": images, "subjectim": subjectim, "masterordering": masterordering,
             "shared": shared, "betas": {}, "mask": {}, "ncsnr": {}, "rois": {}}  # fmt: skip
    for subject in subjects:
        subj = f"subj{int(subject):02d}"
        pp = root / f"nsddata/ppdata/{subj}/{space}"
        (pp / "roi").mkdir(parents=True, exist_ok=True)
        ii, jj, kk = np.indices(shape)
        centre = (np.array(shape) - 1) / 2
        dist = ((ii - centre[0]) / shape[0]) ** 2 + ((jj - centre[1]) / shape[1]) ** 2
        dist = dist + ((kk - centre[2]) / shape[2]) ** 2
        mask = dist < 0.2
        nib.save(nib.Nifti1Image(mask.astype(np.int16), affine), pp / "brainmask.nii.gz")
        general = np.where(mask, (ii >= shape[0] // 2).astype(np.int16), -1).astype(np.int16)
        nib.save(nib.Nifti1Image(general, affine), pp / "roi/nsdgeneral.nii.gz")
        visual = np.where(mask, rng.integers(0, 8, shape), -1).astype(np.int16)
        nib.save(nib.Nifti1Image(visual, affine), pp / "roi/prf-visualrois.nii.gz")
        rois = {"nsdgeneral": general, "prf-visualrois": visual}
        for name in ("floc-faces", "floc-places", "floc-bodies", "floc-words"):
            rois[name] = np.where(mask, rng.integers(0, 4, shape), -1).astype(np.int16)
            nib.save(nib.Nifti1Image(rois[name], affine), pp / f"roi/{name}.nii.gz")
        bdir = root / f"nsddata_betas/ppdata/{subj}/{space}/{version}"
        bdir.mkdir(parents=True, exist_ok=True)
        ncsnr = rng.uniform(0, 1, shape).astype(np.float32)
        nib.save(nib.Nifti1Image(ncsnr, affine), bdir / "ncsnr.nii.gz")
        truth["mask"][subject], truth["ncsnr"][subject] = mask, ncsnr
        truth["rois"][subject] = rois
        for ses in sessions:
            nifti_order = rng.normal(0, 2, (*shape, 750))  # % signal change, (I, J, K, trial)
            ints = np.round(nifti_order * 300).astype(np.int16)
            with h5py.File(bdir / f"betas_session{int(ses):02d}.hdf5", "w") as h5:
                # MATLAB writes column-major: HDF5 sees (trial, K, J, I).
                chunks = (1, *shape[::-1]) if betas_layout == "chunked" else None
                h5.create_dataset("betas", data=ints.transpose(3, 2, 1, 0), chunks=chunks)
            truth["betas"][(subject, ses)] = ints.astype(np.float32) / 300
    return truth


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
