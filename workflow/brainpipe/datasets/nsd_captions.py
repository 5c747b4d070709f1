"""Captions of NSD's images: COCO 2017 caption annotations joined on ``cocoId``.

NSD publishes no captions. Each of its 73k images is a COCO image:
``nsd_stim_info_merged.csv`` gives, per ``nsdId`` (0-based), the ``cocoId`` and
``cocoSplit`` (``train2017`` / ``val2017``), and readers of NSD take the captions from
COCO's own annotation files, ``captions_train2017.json`` and ``captions_val2017.json``
(from ``annotations_trainval2017.zip``), looking ``cocoId`` up among their
``annotations[].image_id`` (tknapen/nsd_access ``nsd_access/nsda.py``,
``read_image_coco_info``).

``source.captions`` says where those files are, either objects in a bucket
(``{bucket, keys, endpoint_url, region, anonymous}``: fetched and verified like every
other object, into the object cache) or local ``files``. An image's caption is its
first COCO caption (lowest annotation ``id``), whitespace-trimmed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from brainpipe.errors import BrainpipeInputError
from brainpipe.remote import WORKERS, S3Source, fetch_objects, safe_local_path

log = logging.getLogger(__name__)

#: Feature models that read the ``caption`` column (their registry entry says so).
OPTION = "source.captions"


def captions_wanted(config: dict[str, Any]) -> list[str]:
    """Feature models in ``config`` (``feature_models`` and model blocks) that need captions."""
    from brainpipe.features import required_columns

    names = set(config.get("feature_models") or [])
    params = config.get("model_params") or {}
    for model in config.get("models") or []:
        block = params.get(model) or {}
        names |= set(block.get("features") or [])
        names |= set(block.get("bands") or [])
    wanted = []
    for name in sorted(names):
        try:
            columns = required_columns(name)
        except Exception:  # noqa: BLE001 - unknown names are reported by the config checks
            continue
        if "caption" in columns:
            wanted.append(name)
    return wanted


def check_captions_configured(config: dict[str, Any], source: dict[str, Any]) -> None:
    """Raise, naming ``source.captions``, if captions are needed and none are configured."""
    wanted = captions_wanted(config)
    if wanted and not source.get("captions"):
        raise BrainpipeInputError(
            "config",
            OPTION,
            f"feature model(s) {wanted} need image captions, and NSD publishes none: set "
            f"{OPTION} to COCO 2017 caption files (captions_train2017.json, "
            "captions_val2017.json from annotations_trainval2017.zip) as "
            "{bucket, keys} or {files}, or drop those feature models",
        )


def fetch_caption_files(block: dict[str, Any], cache: Path, workers: int = WORKERS) -> list[Path]:
    """The local caption files of ``source.captions`` (fetched into ``cache`` if remote)."""
    if not isinstance(block, dict):
        raise BrainpipeInputError("config", OPTION, f"expected a mapping, got {block!r}")
    if block.get("files"):
        paths = [Path(p) for p in block["files"]]
        for path in paths:
            if not path.is_file():
                raise BrainpipeInputError(path, "<file>", f"{OPTION}.files: no such file")
        return paths
    if not block.get("bucket") or not block.get("keys"):
        raise BrainpipeInputError("config", OPTION, "needs 'files', or 'bucket' and 'keys'")
    source = S3Source.from_config(block)
    root = cache / "captions" / source.bucket
    fetch_objects(source, list(block["keys"]), root, workers=workers, progress=False)
    return [safe_local_path(root, key) for key in block["keys"]]


def read_coco_captions(paths: list[Path]) -> dict[int, str]:
    """COCO image id -> its first caption, from COCO-format caption files.

    Raises
    ------
    BrainpipeInputError
        A file is not JSON or lacks ``annotations`` with ``image_id`` and ``caption``.
    """
    first: dict[int, tuple[int, str]] = {}
    for path in paths:
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            raise BrainpipeInputError(path, "<file>", f"not a readable JSON file ({err})") from err
        annotations = doc.get("annotations") if isinstance(doc, dict) else None
        if not isinstance(annotations, list):
            raise BrainpipeInputError(path, "annotations", "expected COCO's list of annotations")
        for n, ann in enumerate(annotations):
            try:
                image, text = int(ann["image_id"]), str(ann["caption"]).strip()
            except (KeyError, TypeError, ValueError) as err:
                raise BrainpipeInputError(
                    path, f"annotations[{n}]", f"needs image_id and caption ({err!r})"
                ) from err
            order = int(ann.get("id", n))
            if image not in first or order < first[image][0]:
                first[image] = (order, text)
    return {image: text for image, (_, text) in first.items()}


def nsd_captions(stim_info: Path, paths: list[Path], nsd_ids: list[int]) -> dict[int, str]:
    """Caption of each 73k image ``nsd_ids`` (0-based), joined on ``cocoId``.

    Raises
    ------
    BrainpipeInputError
        ``nsd_stim_info_merged.csv`` lacks ``nsdId``/``cocoId``, or an image's COCO id has
        no caption in the files given.
    """
    table = pd.read_csv(stim_info)
    for column in ("nsdId", "cocoId"):
        if column not in table.columns:
            raise BrainpipeInputError(stim_info, column, "column is missing")
    coco_of = dict(zip(table["nsdId"].astype(int), table["cocoId"].astype(int), strict=True))
    split_of = dict(zip(table["nsdId"].astype(int), table.get("cocoSplit", ""), strict=True))
    captions = read_coco_captions(paths)
    out = {}
    for nsd_id in nsd_ids:
        coco = coco_of.get(int(nsd_id))
        if coco is None:
            raise BrainpipeInputError(stim_info, "nsdId", f"no row for image {nsd_id}")
        if coco not in captions:
            raise BrainpipeInputError(
                paths[0] if len(paths) == 1 else f"{OPTION} files",
                "annotations",
                f"no caption for cocoId {coco} (nsdId {nsd_id}, cocoSplit "
                f"{split_of.get(int(nsd_id))!s}); give both captions_train2017.json and "
                "captions_val2017.json",
            )
        out[int(nsd_id)] = captions[coco]
    log.info("captions for %d NSD images from %d COCO file(s)", len(out), len(paths))
    return out
