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

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from brainpipe.errors import BrainpipeInputError

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


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


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
            version = np.lib.format.read_magic(fh)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            _, _, dtype = read_header(fh)
        except ValueError as err:
            raise BrainpipeInputError(path, "<file>", f"not a .npy file ({err})") from err
        if dtype != np.dtype(object):
            raise BrainpipeInputError(path, "<file>", f"expected a pickled dict, got {dtype}")
        try:
            obj = _ArrayUnpickler(io.BufferedReader(fh)).load()
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
    stim: np.ndarray,
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
    stim : ndarray, shape (n_samples,)
        Image number at each onset sample, 99999 at targets, else 0.
    """
    from brainpipe.storage import atomic_path

    data = {
        "raw_eeg_data": np.concatenate([eeg, stim[None, :].astype(eeg.dtype)], axis=0),
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
    import mne

    data = read_raw_dict(path)
    info = mne.create_info(list(data["ch_names"]), float(data["sfreq"]), list(data["ch_types"]))
    raw = mne.io.RawArray(data.pop("raw_eeg_data"), info, verbose="error")
    montage = mne.channels.make_standard_montage(MONTAGE)
    raw.set_montage(montage, on_missing="warn", verbose="error")
    return raw


def stimulus_id(partition: str, number: int) -> str:
    """Our id of image ``number`` of a partition: ``train-00001`` / ``test-001``.

    THINGS-EEG2 numbers training and test images separately, both from 1.
    """
    split = PARTITIONS[partition]
    return f"{split}-{int(number):05d}" if split == "train" else f"{split}-{int(number):03d}"
