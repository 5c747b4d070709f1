"""THINGS-EEG2 (Gifford et al. 2022) raw files as published, and their layout.

The raw data on OSF (project 3jk45, "raw EEG data") hold, per subject and session, two
files written by the publishers' ``01_data_preparation/source_to_raw.py``
(github.com/gifale95/eeg_encoding)::

    sub-01/ses-01/raw_eeg_training.npy
    sub-01/ses-01/raw_eeg_test.npy

each ``np.save`` of a dict (a pickled 0-d object array)::

    {"raw_eeg_data": float64 (64, n_samples)   # 63 EEG channels (volts) + "stim"
     "ch_names": [63 EEG names..., "stim"],
     "ch_types": ["eeg"] * 63 + ["stim"],
     "sfreq": 1000, "highpass": 0.01, "lowpass": 100}

The ``stim`` channel is 0 except at each image onset, where it holds the image number
(1-based: training images 1..16540, test images 1..200) or 99999 for the target
(catch) trials. The publishers' ``02_eeg_preprocessing/preprocessing_utils.py`` reads
it with ``mne.find_events(raw, stim_channel="stim")`` and drops event 99999; so do we.

Four sessions per subject; every training image is shown 4 times over the sessions
(2 sessions x 2), every test image 80 times (4 x 20). Training images come from 1654
THINGS concepts (10 images each), test images from 200 other concepts (1 each): the
test concepts are never seen in training.

Reading a pickle runs code chosen by whoever wrote it, so :func:`read_raw_dict`
unpickles with an allow-list (numpy arrays, dtypes and builtins only): a tampered file
fails with an error naming it instead of executing anything.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np

from brainpipe.errors import BrainpipeInputError
from brainpipe.storage import read_npy_header

#: The 63 EEG channels of THINGS-EEG2, in the order of the published ``ch_names``
#: (64-channel easycap, 10-10 positions; the reference is not among them).
CHANNELS: tuple[str, ...] = (
    "Fp1", "Fp2", "AF7", "AF3", "AFz", "AF4", "AF8", "F7", "F5", "F3", "F1", "F2", "F4",
    "F6", "F8", "FT9", "FT7", "FC5", "FC3", "FC1", "FCz", "FC2", "FC4", "FC6", "FT8",
    "FT10", "T7", "C5", "C3", "C1", "Cz", "C2", "C4", "C6", "T8", "TP9", "TP7", "CP5",
    "CP3", "CP1", "CPz", "CP2", "CP4", "CP6", "TP8", "TP10", "P7", "P5", "P3", "P1", "Pz",
    "P2", "P4", "P6", "P8", "PO7", "PO3", "POz", "PO4", "PO8", "O1", "Oz", "O2",
)  # fmt: skip
#: The montage the channel positions come from (MNE ships it).
MONTAGE = "easycap-M1"
#: Value of the stim channel at target (catch) trials.
TARGET_EVENT = 99999
#: File name per partition, and the split its images belong to.
PARTITIONS: dict[str, str] = {"training": "train", "test": "test"}
#: Keys every raw dict must have.
RAW_KEYS = ("raw_eeg_data", "ch_names", "ch_types", "sfreq")

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): np._core.multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): np._core.multiarray.scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _ArrayState:
    """Stands in for an ndarray while unpickling; becomes one in :func:`_materialise`."""

    def __init__(self, cls: Any, shape: Any, dtype: Any) -> None:
        self.array: Any = None

    def __setstate__(self, state: tuple) -> None:
        _, shape, dtype, fortran, rawdata = state[:5]
        if isinstance(rawdata, list):  # object arrays pickle their items
            arr = np.empty(len(rawdata), dtype=object)
            arr[:] = rawdata
        else:  # a bytearray read straight from the file: no copy, and writable
            arr = np.frombuffer(rawdata, dtype=dtype)
        self.array = arr.reshape(shape, order="F" if fortran else "C")


def _materialise(obj: Any) -> Any:
    if isinstance(obj, _ArrayState):
        arr = obj.array
        if arr.dtype == object:
            flat = arr.reshape(-1)
            for i in range(flat.size):
                flat[i] = _materialise(flat[i])
        return arr
    if isinstance(obj, dict):
        return {k: _materialise(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_materialise(v) for v in obj]
    return obj


class _ArrayUnpickler(pickle._Unpickler):  # the Python unpickler: its opcodes can be overridden
    """Unpickles numpy arrays, dtypes and builtins only, large byte strings without a copy.

    ``np.save`` of a dict pickles each array's bytes as one ``BINBYTES`` string; the C
    unpickler reads it into a ``bytes`` object that numpy then copies (twice the
    recording in memory). Here the string is read into a ``bytearray`` the array is a
    view of, so a 2 GB session costs 2 GB.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, fh: Any) -> None:
        super().__init__(fh)
        self._fh = fh

    def find_class(self, module: str, name: str) -> Any:
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _ArrayState
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None

    def _bytes(self, n: int) -> None:
        if self._unframer.current_frame is not None:  # protocol 4 frames hold small strings
            self.append(bytearray(self.read(n)))
            return
        buf = bytearray(n)  # large strings sit outside frames: read them in place
        if self._fh.readinto(buf) != n:
            raise EOFError("truncated byte string")
        self.append(buf)

    def _load_binbytes(self) -> None:
        self._bytes(struct.unpack("<I", self.read(4))[0])

    def _load_binbytes8(self) -> None:
        self._bytes(struct.unpack("<Q", self.read(8))[0])

    def _build(self) -> None:
        inst = self.stack[-2]
        if isinstance(inst, _ArrayState):
            inst.__setstate__(self.stack.pop())
        elif isinstance(inst, np.dtype):
            pickle._Unpickler.load_build(self)
        else:
            raise pickle.UnpicklingError(f"refusing to set the state of {type(inst).__name__}")

    dispatch[pickle.BINBYTES[0]] = _load_binbytes
    dispatch[pickle.BINBYTES8[0]] = _load_binbytes8
    dispatch[pickle.BUILD[0]] = _build


def raw_path(root: str | Path, subject: str, session: str, partition: str) -> Path:
    """``root/sub-XX/ses-YY/raw_eeg_{partition}.npy`` (partition: training or test)."""
    if partition not in PARTITIONS:
        raise ValueError(f"partition must be one of {list(PARTITIONS)}, got {partition!r}")
    return Path(root, f"sub-{subject}", f"ses-{session}", f"raw_eeg_{partition}.npy")


def read_raw_dict(path: str | Path) -> dict[str, Any]:
    """Read one published raw file (a pickled dict in ``.npy``) without running its code.

    Raises
    ------
    BrainpipeInputError
        Missing or unreadable file, a pickle that names anything but numpy arrays, or a
        dict lacking a key / with inconsistent shapes (the message names file and key).
    """
    path = Path(path)
    if not path.exists():
        raise BrainpipeInputError(path, "<file>", "THINGS-EEG2 raw file is missing")
    with open(path, "rb") as fh:
        try:
            _, _, dtype = read_npy_header(fh)
        except ValueError as err:
            raise BrainpipeInputError(path, "<file>", f"not a .npy file ({err})") from err
        if dtype != np.dtype(object):
            raise BrainpipeInputError(path, "<file>", f"expected a pickled dict, got {dtype}")
        try:
            obj = _materialise(_ArrayUnpickler(fh).load())
        except (pickle.UnpicklingError, EOFError, TypeError, AttributeError) as err:
            raise BrainpipeInputError(path, "<file>", f"cannot unpickle safely ({err})") from err
    data = obj.item() if isinstance(obj, np.ndarray) and obj.shape == () else obj
    if not isinstance(data, dict):
        raise BrainpipeInputError(path, "<file>", f"expected a dict, got {type(data).__name__}")
    for key in RAW_KEYS:
        if key not in data:
            raise BrainpipeInputError(path, key, f"key is missing (has {sorted(data)})")
    eeg = data["raw_eeg_data"]
    if not isinstance(eeg, np.ndarray) or eeg.ndim != 2:
        raise BrainpipeInputError(path, "raw_eeg_data", "expected a 2-D array (channel, sample)")
    n = eeg.shape[0]
    for key in ("ch_names", "ch_types"):
        if len(data[key]) != n:
            raise BrainpipeInputError(
                path, key, f"{len(data[key])} entries for {n} rows of raw_eeg_data"
            )
    if "stim" not in data["ch_types"]:
        raise BrainpipeInputError(path, "ch_types", "no 'stim' channel (image onsets)")
    return data


def write_raw_dict(
    path: str | Path,
    eeg: np.ndarray,
    stim: np.ndarray | None,
    ch_names: list[str],
    sfreq: float,
    highpass: float = 0.01,
    lowpass: float = 100.0,
) -> Path:
    """Write a raw file in the published layout (used by the synthetic world).

    Parameters
    ----------
    eeg : ndarray, shape (n_channels, n_samples)
        EEG in volts.
    stim : ndarray, shape (n_samples,), or None
        Image number at each onset sample, 99999 at targets, else 0. None: ``eeg``
        already ends with the stim row (no copy of the recording is made).
    """
    from brainpipe.storage import atomic_path

    data = {
        "raw_eeg_data": eeg
        if stim is None
        else np.concatenate([eeg, stim[None, :].astype(eeg.dtype)], axis=0),
        "ch_names": [*ch_names, "stim"],
        "ch_types": ["eeg"] * len(ch_names) + ["stim"],
        "sfreq": sfreq,
        "highpass": highpass,
        "lowpass": lowpass,
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, data, allow_pickle=True)
    return path


def read_raw(path: str | Path):
    """The raw file as an :class:`mne.io.RawArray` with the easycap montage set.

    Channel types and names come from the file, as in the publishers' preprocessing
    (``mne.create_info(ch_names, sfreq, ch_types)``); positions from ``easycap-M1``.
    """
    return read_raw_and_events(path)[0]


def read_raw_and_events(path: str | Path):
    """The EEG channels as an :class:`mne.io.RawArray` and the stim channel's events.

    Events are :func:`mne.find_events` of the ``stim`` channel (as the publishers read
    them), on a RawArray of that channel alone; the EEG RawArray is a view of the file's
    rows, so the recording is in memory once.
    """
    import mne

    data = read_raw_dict(path)
    rows = np.asarray(data.pop("raw_eeg_data"))
    names, types, sfreq = list(data["ch_names"]), list(data["ch_types"]), float(data["sfreq"])
    stim = [i for i, t in enumerate(types) if t == "stim"]
    keep = [i for i, t in enumerate(types) if t != "stim"]
    stim_raw = mne.io.RawArray(
        rows[stim], mne.create_info([names[i] for i in stim], sfreq, "stim"), verbose="error"
    )
    events = mne.find_events(stim_raw, stim_channel=names[stim[0]], verbose="error")
    if keep == list(range(len(keep))):  # EEG rows first, as published: a view, no copy
        eeg = rows[: len(keep)]
    else:
        eeg = rows[keep]
    info = mne.create_info([names[i] for i in keep], sfreq, [types[i] for i in keep])
    raw = mne.io.RawArray(eeg, info, copy="auto", verbose="error")
    montage = mne.channels.make_standard_montage(MONTAGE)
    raw.set_montage(montage, on_missing="warn", verbose="error")
    return raw, events


def stimulus_id(partition: str, number: int) -> str:
    """Our id of image ``number`` of a partition: ``train-00001`` / ``test-001``.

    THINGS-EEG2 numbers training and test images separately, both from 1.
    """
    split = PARTITIONS[partition]
    return f"{split}-{int(number):05d}" if split == "train" else f"{split}-{int(number):03d}"


# ----------------------------------------------------------------------------- download


def _safe_extract(archive: Path, dest: Path) -> list[Path]:
    """Extract a zip below ``dest``, refusing members that would leave it."""
    import zipfile

    from brainpipe.remote import safe_local_path

    out = []
    with zipfile.ZipFile(archive) as zf:
        for member in zf.infolist():
            if member.is_dir():
                continue
            target = safe_local_path(dest, member.filename)
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(member) as src, open(target, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            out.append(target)
    return out


def select_raw_files(keys: list[str], subjects: list[str], sessions: list[str] | None) -> list[str]:
    """The raw-data files of ``subjects`` (and ``sessions``) among an OSF listing.

    Accepts per-file layouts (``.../sub-01/ses-01/raw_eeg_training.npy``) and per-subject
    archives (``.../sub-01.zip``).
    """
    import re

    keep = []
    for key in keys:
        parts = key.split("/")
        subs = [p for p in parts if re.fullmatch(r"sub-[A-Za-z0-9]+(\.zip)?", p)]
        if not subs:
            continue
        sub = subs[0].removesuffix(".zip")[4:]
        if sub not in subjects:
            continue
        if key.endswith(".zip"):
            keep.append(key)
            continue
        ses = next((p[4:] for p in parts if p.startswith("ses-")), None)
        if parts[-1].startswith("raw_eeg_") and (not sessions or ses in sessions):
            keep.append(key)
    return keep


def stimuli_from_metadata(metadata: str | Path, out_tsv: str | Path) -> Path:
    """Our stimuli table from THINGS-EEG2's ``image_metadata.npy`` (image set on OSF).

    The metadata dict lists ``train_img_concepts`` / ``train_img_files`` (16,540) and
    ``test_img_concepts`` / ``test_img_files`` (200), in image-number order; images live
    in ``training_images/{concept}/{file}`` and ``test_images/{concept}/{file}``. The
    caption is the concept's name (``00001_aardvark`` -> ``aardvark``).
    """
    import pandas as pd

    from brainpipe.storage import write_text_atomic

    meta = _read_npy_dict(Path(metadata))
    rows = []
    for partition, folder, prefix in (("training", "training_images", "train"),
                                      ("test", "test_images", "test")):  # fmt: skip
        concepts = meta.get(f"{prefix}_img_concepts")
        files = meta.get(f"{prefix}_img_files")
        if concepts is None or files is None or len(concepts) != len(files):
            raise BrainpipeInputError(metadata, f"{prefix}_img_files", "missing or mismatched")
        for n, (concept, name) in enumerate(zip(concepts, files, strict=True), start=1):
            rows.append({
                "stimulus": stimulus_id(partition, n),
                "image": f"{folder}/{concept}/{name}",
                "caption": str(concept).split("_", 1)[-1].replace("_", " "),
                "shared": int(partition == "test"),
                "concept": str(concept),
            })  # fmt: skip
    table = pd.DataFrame(rows)
    return write_text_atomic(table.to_csv(sep="\t", index=False), out_tsv)


def _read_npy_dict(path: Path) -> dict[str, Any]:
    with open(path, "rb") as fh:
        read_npy_header(fh)
        try:
            obj = _materialise(_ArrayUnpickler(fh).load())
        except (pickle.UnpicklingError, EOFError, TypeError, AttributeError) as err:
            raise BrainpipeInputError(path, "<file>", f"cannot unpickle safely ({err})") from err
    data = obj.item() if isinstance(obj, np.ndarray) and obj.shape == () else obj
    if not isinstance(data, dict):
        raise BrainpipeInputError(path, "<file>", "expected a pickled dict")
    return data


def download_things_eeg2(
    dest: str | Path,
    source: dict[str, Any],
    subjects: list[str],
    sessions: list[str] | None = None,
    cache: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Fetch THINGS-EEG2's raw files (and optionally its image set) from OSF into ``dest``.

    ``dest/raw_data/sub-XX/ses-YY/raw_eeg_{training,test}.npy`` and, with
    ``source.images_node``, ``dest/stimuli/`` (images and ``stimuli.tsv``). Objects go to a
    persistent cache first (resumed with ``Range``, MD5-verified against OSF's listing),
    then ``dest`` is built atomically.
    """
    import os
    import shutil

    from brainpipe.remote import WORKERS, fetch_objects, safe_local_path
    from brainpipe.remote.osf import OsfSource
    from brainpipe.storage import atomic_path

    if not source.get("node"):
        raise BrainpipeInputError("config", "source.node", "the OSF component of the raw data")
    dest = Path(dest)
    cache = Path(cache) if cache else dest.with_name(f".{dest.name}-objects")
    api = source.get("api_url", "https://api.osf.io/v2")
    workers = int(source.get("workers") or WORKERS)
    raw_src = OsfSource(node=source["node"], api_url=api, provider=source.get("provider"))
    listing = raw_src.list("")
    keys = select_raw_files([o.key for o in listing], subjects, sessions)
    found = {k.split("sub-", 1)[1].split("/")[0].removesuffix(".zip") for k in keys}
    missing = [s for s in subjects if s not in found]
    if missing:
        raise BrainpipeInputError(raw_src.url(""), "subjects", f"no raw files for sub-{missing[0]}")
    wanted = [o for o in listing if o.key in set(keys)]
    fetch_objects(raw_src, wanted, cache / "raw", workers=workers, progress=progress)
    image_objs = []
    if source.get("images_node"):
        img_src = OsfSource(node=source["images_node"], api_url=api)
        image_objs = [
            o for o in img_src.list("")
            if o.key.endswith(("image_metadata.npy", "training_images.zip", "test_images.zip"))
        ]  # fmt: skip
        fetch_objects(img_src, image_objs, cache / "images", workers=workers, progress=progress)
    with atomic_path(dest) as tmp:
        raw_dir = Path(tmp, "raw_data")
        for obj in wanted:
            src = safe_local_path(cache / "raw", obj.key)
            rel = "sub-" + obj.key.split("sub-", 1)[1]
            if obj.key.endswith(".zip"):
                for path in _safe_extract(src, raw_dir):
                    inner = path.relative_to(raw_dir).as_posix()
                    if not inner.startswith("sub-"):  # archive without the subject folder
                        target = raw_dir / rel.removesuffix(".zip") / inner
                        target.parent.mkdir(parents=True, exist_ok=True)
                        os.replace(path, target)
                continue
            target = safe_local_path(raw_dir, rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, target)
            except OSError:
                shutil.copy2(src, target)
        stim_dir = Path(tmp, "stimuli")
        for obj in image_objs:
            src = safe_local_path(cache / "images", obj.key)
            stim_dir.mkdir(parents=True, exist_ok=True)
            if obj.key.endswith(".zip"):
                _safe_extract(src, stim_dir)
            else:
                stimuli_from_metadata(src, stim_dir / "stimuli.tsv")
        Path(tmp, "dataset_description.json").write_text(
            '{"Name": "THINGS-EEG2 raw data (Gifford et al. 2022), fetched from OSF"}\n'
        )
    return dest
