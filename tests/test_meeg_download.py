"""THINGS-EEG2 over HTTP from a loopback server that speaks OSF's files API.

The server lists folders the way ``api.osf.io/v2/nodes/{node}/files/{provider}/`` does
(JSON:API pages with ``links.next``; entries with ``attributes.kind``,
``materialized_path``, ``size``, ``extra.hashes.md5`` and ``links.download``; folders with
``relationships.files.links.related.href``), lists the component's storage providers at
``/v2/nodes/{node}/files/`` (OSF API: "List all storage providers"), and serves downloads
with ``Range``. THINGS-EEG2's raw component ``crxs4`` keeps per-subject archives
(``sub-01.zip`` holding ``sub-01/ses-01/raw_eeg_training.npy``, ...) on its figshare add-on
and a description on osfstorage, as Meta's neuralset (``Gifford2021._download``: storage
indices 0 and 2 of ``crxs4``, then ``sub-*.zip`` extracted to ``sub-XX/ses-YY/``) reads it.
"""

from __future__ import annotations

import hashlib
import json
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from brainpipe.errors import BrainpipeInputError
from brainpipe.meeg import synthetic, things_eeg2
from brainpipe.remote import read_manifest
from brainpipe.remote.errors import RemoteIntegrityError


class OsfServer:
    """Serves the files under ``root`` as OSF node ``node``; can cut or corrupt transfers."""

    def __init__(
        self, root: Path, node: str = "crxs4", page_size: int = 2,
        providers: dict[str, Path] | None = None,
    ) -> None:  # fmt: skip
        self.node, self.page_size = node, page_size
        self.providers = providers or {"osfstorage": root}
        self.cut_first: set[str] = set()  # paths whose first GET stops half-way
        self.corrupt: set[str] = set()  # paths always served with one byte flipped
        self.ranges: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):  # noqa: N802
                if self.path.startswith("/download/"):
                    return server.download(self)
                return server.listing(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _entry(self, provider: str, path: Path) -> dict:
        rel = path.relative_to(self.providers[provider]).as_posix()
        if path.is_dir():
            href = f"{self.url}/v2/nodes/{self.node}/files/{provider}/{rel}/"
            return {"attributes": {"kind": "folder", "materialized_path": f"/{rel}/"},
                    "relationships": {"files": {"links": {"related": {"href": href}}}}}  # fmt: skip
        md5 = hashlib.md5(path.read_bytes()).hexdigest()
        return {
            "attributes": {"kind": "file", "materialized_path": f"/{rel}",
                           "size": path.stat().st_size, "extra": {"hashes": {"md5": md5}}},
            "links": {"download": f"{self.url}/download/{provider}/{rel}"},
        }  # fmt: skip

    def _provider_entry(self, provider: str) -> dict:
        href = f"{self.url}/v2/nodes/{self.node}/files/{provider}/"
        return {"id": f"{self.node}:{provider}", "type": "files",
                "attributes": {"kind": "folder", "name": provider, "path": "/",
                               "node": self.node, "provider": provider},
                "relationships": {"files": {"links": {"related": {"href": href}}}}}  # fmt: skip

    def listing(self, handler) -> None:
        base, _, query = handler.path.partition("?")
        prefix = f"/v2/nodes/{self.node}/files/"
        if not base.startswith(prefix):
            handler.send_error(404)
            return
        provider, _, rel = base[len(prefix) :].partition("/")
        if not provider:  # the component's storage providers
            items = [self._provider_entry(p) for p in self.providers]
        elif provider in self.providers:
            folder = self.providers[provider] / rel.strip("/")
            items = [(provider, c) for c in sorted(folder.iterdir())]
        else:
            handler.send_error(404)
            return
        page = int(query.split("=")[1]) if query.startswith("page=") else 1
        chunk = items[(page - 1) * self.page_size : page * self.page_size]
        more = page * self.page_size < len(items)
        body = {
            "data": [c if isinstance(c, dict) else self._entry(*c) for c in chunk],
            "links": {"next": f"{self.url}{base}?page={page + 1}" if more else None},
        }
        data = json.dumps(body).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/vnd.api+json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def download(self, handler) -> None:
        provider, _, rel = handler.path[len("/download/") :].partition("/")
        data = bytearray((self.providers[provider] / rel).read_bytes())
        if rel in self.corrupt:
            data[len(data) // 2] ^= 0xFF
        start = 0
        rng = handler.headers.get("Range")
        if rng:
            self.ranges.append(f"{rel} {rng}")
            start = int(rng.split("=")[1].split("-")[0])
        body = bytes(data[start:])
        handler.send_response(206 if rng else 200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if rel in self.cut_first:
            self.cut_first.discard(rel)
            handler.wfile.write(body[: len(body) // 2])
            handler.wfile.flush()
            handler.close_connection = True
            handler.connection.shutdown(2)
            return
        handler.wfile.write(body)


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    """An OSF-like tree: raw_data/sub-XX/ses-YY/raw_eeg_*.npy as THINGS-EEG2 publishes."""
    world = tmp_path_factory.mktemp("osf") / "world"
    params = synthetic.MeegSyntheticParams.from_config(
        {"n_subjects": 2, "n_sessions": 2, "n_train_concepts": 6, "n_test_concepts": 3}
    )
    synthetic.generate(world, params)
    return world


def test_fetch_resumes_verifies_and_lays_out_the_raw_files(published, tmp_path):
    server = OsfServer(published)
    key = "raw_data/sub-01/ses-02/raw_eeg_training.npy"
    server.cut_first.add(key)
    try:
        dest = things_eeg2.download_things_eeg2(
            tmp_path / "things-eeg2", {"node": "crxs4", "api_url": f"{server.url}/v2"},
            subjects=["01"], sessions=["01", "02"], progress=False,
        )  # fmt: skip
    finally:
        server.close()
    files = sorted(p.relative_to(dest / "raw_data").as_posix() for p in dest.rglob("*.npy"))
    assert files == [f"sub-01/ses-{s}/raw_eeg_{p}.npy" for s in ("01", "02")
                     for p in ("test", "training")]  # fmt: skip
    for rel in files:
        assert (dest / "raw_data" / rel).read_bytes() == (published / "raw_data" / rel).read_bytes()
    assert any(r.startswith(key) for r in server.ranges)  # the cut transfer resumed
    manifest = read_manifest(tmp_path / ".things-eeg2-objects" / "raw")
    assert {r["verified"] for r in manifest.values()} == {"md5"}
    raw = things_eeg2.read_raw(dest / "raw_data" / "sub-01" / "ses-01" / "raw_eeg_test.npy")
    assert raw.ch_names[:63] == list(things_eeg2.CHANNELS)


def test_corrupt_transfer_is_refused_and_missing_subject_named(published, tmp_path):
    server = OsfServer(published)
    server.corrupt.add("raw_data/sub-02/ses-01/raw_eeg_test.npy")
    try:
        with pytest.raises(RemoteIntegrityError):
            things_eeg2.download_things_eeg2(
                tmp_path / "d", {"node": "crxs4", "api_url": f"{server.url}/v2", "workers": 1},
                subjects=["02"], sessions=["01"], progress=False,
            )  # fmt: skip
        assert not (tmp_path / "d").exists()  # nothing that looks finished
        with pytest.raises(BrainpipeInputError, match="sub-07"):
            things_eeg2.download_things_eeg2(
                tmp_path / "e", {"node": "crxs4", "api_url": f"{server.url}/v2"},
                subjects=["07"], progress=False,
            )  # fmt: skip
    finally:
        server.close()


def test_raw_archives_on_the_components_figshare_storage(published, tmp_path):
    """As THINGS-EEG2 publishes: sub-XX.zip on figshare, a description on osfstorage."""
    figshare, osfstorage = tmp_path / "figshare", tmp_path / "osfstorage"
    figshare.mkdir(), osfstorage.mkdir()
    (osfstorage / "README.txt").write_text("THINGS-EEG2 raw EEG data\n")
    for sub in ("01", "02"):
        with zipfile.ZipFile(figshare / f"sub-{sub}.zip", "w") as zf:
            for npy in sorted((published / "raw_data" / f"sub-{sub}").rglob("*.npy")):
                zf.write(npy, npy.relative_to(published / "raw_data").as_posix())
    server = OsfServer(published, providers={"osfstorage": osfstorage, "figshare": figshare})
    try:
        dest = things_eeg2.download_things_eeg2(
            tmp_path / "things-eeg2", {"node": "crxs4", "api_url": f"{server.url}/v2"},
            subjects=["02"], sessions=["01", "02"], progress=False,
        )  # fmt: skip
    finally:
        server.close()
    files = sorted(p.relative_to(dest / "raw_data").as_posix() for p in dest.rglob("*.npy"))
    assert files == [f"sub-02/ses-{s}/raw_eeg_{p}.npy" for s in ("01", "02")
                     for p in ("test", "training")]  # fmt: skip
    for rel in files:
        assert (dest / "raw_data" / rel).read_bytes() == (published / "raw_data" / rel).read_bytes()
    manifest = read_manifest(tmp_path / ".things-eeg2-objects" / "raw")
    assert sorted(manifest) == ["sub-02.zip"] and manifest["sub-02.zip"]["verified"] == "md5"


def test_stimuli_table_from_the_image_metadata(tmp_path):
    meta = {
        "train_img_concepts": ["00001_aardvark", "00001_aardvark"],
        "train_img_files": ["aardvark_01b.jpg", "aardvark_02s.jpg"],
        "test_img_concepts": ["00002_ice_cream"],
        "test_img_files": ["ice_cream_01b.jpg"],
    }
    np.save(tmp_path / "image_metadata.npy", meta, allow_pickle=True)
    out = things_eeg2.stimuli_from_metadata(tmp_path / "image_metadata.npy", tmp_path / "s.tsv")
    table = __import__("pandas").read_csv(out, sep="\t")
    assert list(table["stimulus"]) == ["train-00001", "train-00002", "test-001"]
    assert list(table["shared"]) == [0, 0, 1]
    assert table["caption"].iloc[2] == "ice cream"
    assert table["image"].iloc[0] == "training_images/00001_aardvark/aardvark_01b.jpg"
