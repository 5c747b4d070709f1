"""Stimuli streamed to a network in batches, decoded on DataLoader workers.

Where a dataset keeps its stimuli, by the columns of its stimuli table:

- ``image``: an image file (PNG, JPEG…), relative to the table's folder;
- ``image_hdf5`` + ``image_index`` (+ optional ``image_dataset``, default ``imgBrick``):
  one row of an HDF5 image brick, read by index and never whole. NSD ships its 73,000
  images as ``nsd_stimuli.hdf5:/imgBrick`` (73000 × 425 × 425 × 3, uint8; NSD data
  manual, "nsddata_stimuli");
- ``caption``: text;
- ``video``: a video file, decoded to luminance frames with OpenCV.

Each worker opens its own HDF5 handle (h5py handles must not cross processes) and runs
the network's own preprocessing, so the main process only stacks tensors and runs the
network while the next batches decode.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainpipe.errors import BrainpipeInputError

HDF5_DEFAULT_DATASET = "imgBrick"


def stimulus_column(modality: str, table: pd.DataFrame, source: str) -> str:
    """The column holding each stimulus for ``modality``; error names the table."""
    wanted = {"image": ("image_hdf5", "image"), "text": ("caption",), "video": ("video",)}
    for col in wanted[modality]:
        if col in table.columns:
            if col == "image_hdf5" and "image_index" not in table.columns:
                raise BrainpipeInputError(source, "image_index", "column is missing (image_hdf5)")
            return col
    raise BrainpipeInputError(
        source,
        wanted[modality][-1],
        f"column is missing: a {modality} network reads one of {list(wanted[modality])}",
    )


class StimulusDataset:
    """Map-style dataset: item ``i`` = ``preprocess(stimulus i)`` (a torch Dataset).

    Parameters
    ----------
    table : DataFrame
        Stimuli table (``attrs["source"]`` names the file for messages).
    root : Path
        Folder relative paths are resolved against.
    modality : {"image", "text", "video"}
    preprocess : callable
        The network's own preprocessing of one stimulus.
    """

    def __init__(
        self, table: pd.DataFrame, root: Path, modality: str, preprocess: Callable[[Any], Any]
    ) -> None:
        self.source = str(table.attrs.get("source", "<stimuli table>"))
        self.root = Path(root)
        self.modality = modality
        self.preprocess = preprocess
        self.column = stimulus_column(modality, table, self.source)
        self.values = table[self.column].astype(str).tolist()
        self.stimuli = table["stimulus"].astype(str).tolist()
        if self.column == "image_hdf5":
            self.indices = pd.to_numeric(table["image_index"], errors="coerce").to_numpy()
            bad = ~np.isfinite(self.indices) | (self.indices < 0)
            if bad.any():
                raise BrainpipeInputError(
                    self.source,
                    "image_index",
                    f"stimulus {self.stimuli[int(np.argmax(bad))]!r}: expected a row index >= 0",
                )
            self.indices = self.indices.astype(np.int64)
            self.datasets = (
                table["image_dataset"].astype(str).tolist()
                if "image_dataset" in table.columns
                else [HDF5_DEFAULT_DATASET] * len(table)
            )
        self._h5: dict[str, Any] = {}

    def check(self) -> None:
        """Check every stimulus is where the table says, before any worker starts.

        Raises
        ------
        BrainpipeInputError
            Naming the table, the column and the first stimulus whose file is missing
            or whose HDF5 row is past the end of its brick.
        """
        if self.column == "caption":
            return
        for i in range(len(self)):
            if self.column != "image_hdf5" or i == 0 or self.values[i] != self.values[i - 1]:
                self._path(i)
        if self.column == "image_hdf5":
            import h5py

            pairs = list(zip(self.values, self.datasets, strict=True))
            for value in sorted(set(pairs)):
                rows = [i for i, v in enumerate(pairs) if v == value]
                path = self.root / value[0]
                with h5py.File(path, "r") as h5:
                    brick = h5.get(value[1])
                    if brick is None or brick.ndim != 4 or brick.shape[-1] != 3:
                        raise BrainpipeInputError(
                            str(path), value[1], "expected an (n, height, width, 3) image brick"
                        )
                    n = brick.shape[0]
                bad = [i for i in rows if self.indices[i] >= n]
                if bad:
                    raise BrainpipeInputError(
                        self.source,
                        "image_index",
                        f"stimulus {self.stimuli[bad[0]]!r}: row {self.indices[bad[0]]} is past "
                        f"the {n} images of {path}:{value[1]}",
                    )

    def close(self) -> None:
        """Close HDF5 handles opened in this process (before loader workers fork)."""
        for h5 in self._h5.values():
            h5.close()
        self._h5 = {}

    def __len__(self) -> int:
        return len(self.values)

    def _path(self, i: int) -> Path:
        path = self.root / self.values[i]
        if not path.is_file():
            raise BrainpipeInputError(
                self.source, self.column, f"stimulus {self.stimuli[i]!r}: file {path} is missing"
            )
        return path

    def _hdf5_image(self, i: int) -> Any:
        import h5py
        from PIL import Image

        path = self._path(i)
        key = str(path)
        if key not in self._h5:  # one handle per worker process
            self._h5[key] = h5py.File(path, "r")
        brick = self._h5[key].get(self.datasets[i])
        if brick is None or brick.ndim != 4 or brick.shape[-1] != 3:
            raise BrainpipeInputError(
                str(path),
                self.datasets[i],
                "expected an (n, height, width, 3) uint8 image brick",
            )
        if self.indices[i] >= brick.shape[0]:
            raise BrainpipeInputError(
                self.source,
                "image_index",
                f"stimulus {self.stimuli[i]!r}: row {self.indices[i]} is past the "
                f"{brick.shape[0]} images of {path}:{self.datasets[i]}",
            )
        return Image.fromarray(np.asarray(brick[self.indices[i]], dtype=np.uint8))

    def load(self, i: int) -> Any:
        """The raw stimulus ``i``: PIL image, caption string or video path."""
        if self.column == "image_hdf5":
            return self._hdf5_image(i)
        if self.column == "image":
            from PIL import Image

            path = self._path(i)
            try:
                with Image.open(path) as im:
                    return im.convert("RGB")
            except OSError as err:
                raise BrainpipeInputError(
                    self.source, "image", f"stimulus {self.stimuli[i]!r}: cannot read {path}: {err}"
                ) from None
        if self.column == "video":
            return self._path(i)
        return self.values[i]

    def __getitem__(self, i: int) -> Any:
        return self.preprocess(self.load(i))

    def __getstate__(self) -> dict[str, Any]:  # workers open their own HDF5 handles
        state = dict(self.__dict__)
        state["_h5"] = {}
        return state


def read_video_luminance(path: Any, size: tuple[int, int] = (96, 96)) -> tuple[np.ndarray, float]:
    """Decode a video to luminance frames ``(n_frames, height, width)`` in [0, 100].

    Frames are converted to CIE L* (as pymoten's ``video2luminance`` does) after resizing
    to ``size`` (height, width).

    Returns
    -------
    luminance : ndarray of float32, shape (n_frames, height, width)
    fps : float
    """
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise BrainpipeInputError(str(path), "video", "cannot open the video")
    fps = float(cap.get(cv2.CAP_PROP_FPS)) or 24.0
    frames = []
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frame = cv2.resize(frame, (size[1], size[0]), interpolation=cv2.INTER_AREA)
            lab = cv2.cvtColor(frame.astype(np.float32) / 255.0, cv2.COLOR_BGR2Lab)
            frames.append(lab[..., 0])
    finally:
        cap.release()
    if not frames:
        raise BrainpipeInputError(str(path), "video", "no frames could be decoded")
    return np.stack(frames).astype(np.float32), fps
