"""A synthetic M/EEG world with ground truth, written in THINGS-EEG2's or BIDS MEG's layout.

The stimuli are the fMRI world's procedural images (:mod:`brainpipe.datasets.
synthetic_stimuli`): a *concept* is a (category, colour, size) triple, as a THINGS concept
is an object noun. Training images come from ``n_train_concepts`` concepts
(``images_per_train_concept`` each), test images from ``n_test_concepts`` other concepts (one
each), so test concepts are never seen in training — THINGS-EEG2's zero-shot design.

Model of the data
-----------------
Each stimulus ``s`` has a latent response ``z[s, j]`` (one value per *stimulus source*
``j``): a random linear map of its category, superordinate, colour and size one-hots, or,
with ``response_network`` / ``response_layer`` set, a random rotation of the leading
principal components of that layer of a random-initialised network (seeded with ``seed``;
a feature job with ``weights: random`` and the same seed rebuilds it), each component
z-scored over all stimuli. Only in the second case is the signal tied to an image
embedding a decoder can target; the concept factors are not spanned by, e.g., a
random-initialised CLIP embedding of the images. A stimulus shown at onset ``t0`` adds, on the
sensors::

    L[:, j] * signal_uv * z[s, j] * (1 + 0.1 N(0,1)) * w_j(t - t0)     (stimulus sources)
  + L[:, k] * erp_uv * e_k(t - t0)                                    (generic ERP, k = 0, 1)

where ``w_j`` is a Hann bump lying entirely inside ``[window_start_s, window_end_s]``
(the *information window*), ``e_k`` are stimulus-independent P1/N1-like bumps (they carry
no information about the stimulus), and ``L`` is the lead field of fixed-orientation dipoles
computed by MNE (:func:`mne.make_forward_solution`) on a three-shell sphere head model
(:func:`mne.make_sphere_model`: no MRI, no download) for the easycap-M1 positions of
THINGS-EEG2's 63 channels, or for point magnetometers on MNE's CTF-275 helmet (MEG); each
column of ``L`` is scaled to unit RMS over sensors, so amplitudes are in sensor volts (or
tesla-equivalent units). Stimulus sources sit in the posterior half of the head.

Noise: ``n_noise_sources`` dipoles anywhere in the head with AR(1) time courses (coefficient
0.95, spatially correlated on the sensors: what multivariate noise normalisation removes),
white sensor noise and a slow random-walk drift per channel.

Images are presented in RSVP sequences (``soa_s`` apart, as THINGS-EEG2's 200 ms), so the
responses to neighbouring images overlap; a few target trials (stim value 99999) are mixed in.

Truth (``derivatives/groundtruth/sub-XX/truth.zarr``): ``latent(stimulus, source)``,
``waveform(source, time)``, ``leadfield(channel, source)``, the information window, and
the concept of every stimulus (``stimuli/stimuli.tsv`` has its factors and caption).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from scipy.signal import lfilter, oaconvolve

from brainpipe import __version__
from brainpipe.datasets import synthetic_stimuli as stim
from brainpipe.errors import BrainpipeInputError
from brainpipe.meeg import things_eeg2

_TAG_CONCEPTS, _TAG_STIM, _TAG_LATENT, _TAG_SOURCES, _TAG_SESSION = range(101, 106)
#: Every (category, colour, size) triple: the synthetic concepts.
CONCEPTS: tuple[tuple[str, str, str], ...] = tuple(
    (c, k, s) for c in stim.CATEGORIES for k in stim.COLOURS for s in stim.SIZES
)
#: THINGS-MEG's BIDS task label (OpenNeuro ds004212).
MEG_TASK = "main"


@dataclass(frozen=True)
class MeegSyntheticParams:
    """Parameters of the synthetic M/EEG world (config block ``synthetic_meeg``)."""

    seed: int = 0
    modality: str = "eeg"  # eeg: THINGS-EEG2 raw files; meg: BIDS MEG (THINGS-MEG)
    n_subjects: int = 2
    n_sessions: int = 2
    n_train_concepts: int = 40
    images_per_train_concept: int = 2
    n_test_concepts: int = 20
    train_reps_per_session: int = 2
    test_reps_per_session: int = 5
    sfreq: float = 250.0
    soa_s: float = 0.2
    sequence_length: int = 20
    gap_s: float = 1.0
    targets_per_sequence: int = 1
    n_sources: int = 8
    window_start_s: float = 0.15
    window_end_s: float = 0.35
    signal_uv: float = 3.0
    erp_uv: float = 4.0
    n_noise_sources: int = 16
    noise_uv: float = 3.0
    sensor_noise_uv: float = 1.5
    n_meg_channels: int = 64
    image_size: int = 48
    # A network layer behind the latent responses (random-init weights of the real
    # architecture, seeded with ``seed``), e.g. "clipvitb32" + "embedding": decoding to that
    # layer's features then recovers the signal. Empty: the concept factors (category,
    # superordinate, colour, size), which no image network's embedding need span.
    response_network: str = ""
    response_layer: str = ""

    def __post_init__(self) -> None:
        if self.modality not in ("eeg", "meg"):
            raise BrainpipeInputError(
                "config", "synthetic_meeg.modality", f"expected eeg or meg, got {self.modality!r}"
            )
        n_concepts = self.n_train_concepts + self.n_test_concepts
        if n_concepts > len(CONCEPTS):
            raise BrainpipeInputError(
                "config",
                "synthetic_meeg.n_train_concepts",
                f"train + test concepts = {n_concepts} > the {len(CONCEPTS)} there are",
            )
        if not 0 <= self.window_start_s < self.window_end_s <= 0.8:
            raise BrainpipeInputError(
                "config", "synthetic_meeg.window_start_s", "need 0 <= start < end <= 0.8 s"
            )
        for name in ("n_subjects", "n_sessions", "n_train_concepts", "n_test_concepts",
                     "images_per_train_concept", "n_sources", "sequence_length"):  # fmt: skip
            if getattr(self, name) < 1:
                raise BrainpipeInputError("config", f"synthetic_meeg.{name}", "must be >= 1")
        if self.response_network or self.response_layer:
            from brainpipe.features.networks import get_network

            net = get_network(self.response_network, "config", "synthetic_meeg.response_network")
            if self.response_layer not in net.layers:
                raise BrainpipeInputError(
                    "config",
                    "synthetic_meeg.response_layer",
                    f"got {self.response_layer!r}; {net.name} layers: {', '.join(net.layers)}",
                )
            n_stimuli = self.n_train_concepts * self.images_per_train_concept + self.n_test_concepts
            if self.n_sources >= n_stimuli:
                raise BrainpipeInputError(
                    "config",
                    "synthetic_meeg.n_sources",
                    f"{self.n_sources} principal components of {n_stimuli} stimuli:"
                    f" expected fewer sources than stimuli",
                )

    @classmethod
    def from_config(cls, block: dict[str, Any] | None) -> MeegSyntheticParams:
        """Build from the config's ``synthetic_meeg`` block (unknown keys are an error)."""
        block = dict(block or {})
        known = {f.name for f in fields(cls)}
        for key in block:
            if key not in known:
                raise BrainpipeInputError(
                    "config", f"synthetic_meeg.{key}", f"unknown key; known: {sorted(known)}"
                )
        return cls(**block)


def subject_ids(params: MeegSyntheticParams) -> list[str]:
    """``01, 02, ...`` (EEG, as THINGS-EEG2) or ``BIGMEG1, ...`` (MEG, as THINGS-MEG)."""
    if params.modality == "meg":
        return [f"BIGMEG{i}" for i in range(1, params.n_subjects + 1)]
    return [f"{i:02d}" for i in range(1, params.n_subjects + 1)]


def session_ids(params: MeegSyntheticParams) -> list[str]:
    return [f"{i:02d}" for i in range(1, params.n_sessions + 1)]


def _rng(params: MeegSyntheticParams, *keys: int) -> np.random.Generator:
    return np.random.default_rng([params.seed, *keys])


def _zscore(a: np.ndarray) -> np.ndarray:
    return (a - a.mean(0)) / (a.std(0) + 1e-12)


def make_stimuli(params: MeegSyntheticParams) -> pd.DataFrame:
    """The stimulus table: id, image, caption, shared (test = 1), split, concept, factors."""
    rng = _rng(params, _TAG_CONCEPTS)
    order = rng.permutation(len(CONCEPTS))
    test_concepts = [CONCEPTS[i] for i in order[: params.n_test_concepts]]
    n_test = params.n_test_concepts
    train_concepts = [CONCEPTS[i] for i in order[n_test : n_test + params.n_train_concepts]]
    rows = []
    plan = [("training", c) for c in train_concepts for _ in range(params.images_per_train_concept)]
    plan += [("test", c) for c in test_concepts]
    counters = {"training": 0, "test": 0}
    for n, (partition, (category, colour, size)) in enumerate(plan):
        counters[partition] += 1
        r = _rng(params, _TAG_STIM, n)
        x, y = (round(float(v), 3) for v in r.uniform(0.3, 0.7, size=2))
        factors = stim.StimulusFactors(
            category, stim.CATEGORIES[category], colour, size, x, y,
            round(float(r.uniform(0.0, 360.0)), 1),
        )  # fmt: skip
        if params.modality == "eeg":  # THINGS-EEG2 numbers each partition from 1
            number = counters[partition]
            sid = things_eeg2.stimulus_id(partition, number)
        else:  # THINGS-MEG: one image number per image (bids_meg: things-{value})
            number = n + 1
            sid = f"things-{number:05d}"
        rows.append(
            {
                "stimulus": sid,
                "image": f"images/{sid}.png",
                "caption": stim.caption_for(factors, r),
                "shared": int(partition == "test"),
                "split": things_eeg2.PARTITIONS[partition],
                "number": number,
                "concept": f"{size}-{colour}-{category}",
                "category": category,
                "superordinate": factors.superordinate,
                "colour": colour,
                "size": size,
                "x": x,
                "y": y,
                "orientation": factors.orientation,
            }
        )
    return pd.DataFrame(rows)


def latent_responses(
    params: MeegSyntheticParams, stimuli: pd.DataFrame, images: np.ndarray | None = None
) -> np.ndarray:
    """``z[stimulus, source]``, z-scored over stimuli.

    A random linear map of the concept one-hots, or, with ``params.response_network``, of
    the leading principal components of that network layer's activations to ``images``
    (``(n_stimuli, height, width, 3)`` uint8, in the rows of ``stimuli``): the same
    random-initialised network a feature job builds with ``weights: random`` and
    ``seed = params.seed``, so decoding to its features can recover the signal, also for
    test concepts never seen in training (the map is linear in the features, not in the
    concepts).
    """
    rng = _rng(params, _TAG_LATENT)
    if params.response_network:
        from brainpipe.features.extract import layer_activations

        if images is None or len(images) != len(stimuli):
            raise BrainpipeInputError(
                "config", "synthetic_meeg.response_network", "needs one image per stimulus"
            )
        acts = layer_activations(
            params.response_network, params.response_layer, images, seed=params.seed
        ).astype(np.float64)
        u, s, _ = np.linalg.svd(acts - acts.mean(axis=0), full_matrices=False)
        pcs = _zscore(u[:, : params.n_sources] * s[: params.n_sources])
        mix = np.linalg.qr(rng.standard_normal((params.n_sources, params.n_sources)))[0]
        return _zscore(pcs @ mix)
    blocks = []
    for col, values in (
        ("category", list(stim.CATEGORIES)),
        ("superordinate", list(stim.SUPERORDINATES)),
        ("colour", list(stim.COLOURS)),
        ("size", list(stim.SIZES)),
    ):
        blocks.append(np.eye(len(values))[[values.index(v) for v in stimuli[col]]])
    onehot = np.concatenate(blocks, axis=1)
    return _zscore(onehot @ rng.standard_normal((onehot.shape[1], params.n_sources)))


def _bump(times: np.ndarray, centre: float, half_width: float) -> np.ndarray:
    """A Hann bump of peak 1, zero outside ``centre ± half_width``."""
    u = (times - centre) / half_width
    return np.where(np.abs(u) < 1, 0.5 * (1 + np.cos(np.pi * u)), 0.0)


def eeg_info(sfreq: float):
    """MNE info of THINGS-EEG2's 63 channels with easycap-M1 positions."""
    import mne

    info = mne.create_info(list(things_eeg2.CHANNELS), sfreq, "eeg")
    info.set_montage(mne.channels.make_standard_montage(things_eeg2.MONTAGE), verbose="error")
    return info


def meg_info(sfreq: float, n_channels: int):
    """Point magnetometers on MNE's CTF-275 helmet surface, 1 cm outside it."""
    import os

    import mne
    from mne.io.constants import FIFF

    path = Path(os.path.dirname(mne.__file__), "data", "helmets", "CTF_275.fif.gz")
    surf = mne.read_bem_surfaces(path, verbose="error")[0]
    rr, nn = surf["rr"], surf["nn"]
    keep = np.nonzero(rr[:, 2] > -0.03)[0]
    pick = keep[np.linspace(0, len(keep) - 1, n_channels).round().astype(int)]
    info = mne.create_info([f"MEG{i:03d}" for i in range(n_channels)], sfreq, "mag")
    with info._unlock():
        for ch, v in zip(info["chs"], pick, strict=True):
            normal = nn[v] if rr[v] @ nn[v] > 0 else -nn[v]
            ez = normal / np.linalg.norm(normal)
            ex = np.cross(ez, [0.0, 0.0, 1.0] if abs(ez[2]) < 0.9 else [1.0, 0.0, 0.0])
            ex /= np.linalg.norm(ex)
            ch["loc"][:12] = np.concatenate([rr[v] + 0.01 * ez, ex, np.cross(ez, ex), ez])
            ch["coil_type"] = FIFF.FIFFV_COIL_POINT_MAGNETOMETER
            ch["coord_frame"] = FIFF.FIFFV_COORD_DEVICE
        info["dev_head_t"] = mne.transforms.Transform("meg", "head", np.eye(4))
    return info


def leadfield(info, positions: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Fixed-orientation lead field ``(n_channels, n_dipoles)`` on a sphere head model.

    ``positions`` are unit-sphere directions scaled by a depth in (0, 1): each dipole sits
    at ``r0 + depth * 0.07 m`` inside the model's sphere.
    """
    import mne

    meg = any(ch["kind"] == mne.io.constants.FIFF.FIFFV_MEG_CH for ch in info["chs"])
    if meg:
        sphere = mne.make_sphere_model(r0=(0.0, 0.0, 0.0), head_radius=0.09, verbose="error")
    else:
        sphere = mne.make_sphere_model("auto", "auto", info, verbose="error")
    r0 = np.asarray(sphere["r0"], dtype=float)
    src = mne.setup_volume_source_space(
        pos={"rr": r0 + positions * 0.07, "nn": normals}, sphere=sphere, verbose="error"
    )
    fwd = mne.make_forward_solution(
        info, trans=None, src=src, bem=sphere, meg=meg, eeg=not meg, verbose="error"
    )
    fwd = mne.convert_forward_solution(fwd, force_fixed=True, surf_ori=False, verbose="error")
    gain = fwd["sol"]["data"]
    return gain / np.sqrt((gain**2).mean(axis=0, keepdims=True))


def _directions(rng: np.random.Generator, n: int, posterior: bool) -> tuple[np.ndarray, np.ndarray]:
    d = rng.standard_normal((n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    if posterior:  # head frame: +y anterior, +z up
        d[:, 1] = -np.abs(d[:, 1]) - 0.5
        d[:, 2] = np.abs(d[:, 2])
        d /= np.linalg.norm(d, axis=1, keepdims=True)
    depth = rng.uniform(0.6, 0.9, size=(n, 1))
    normals = d + 0.3 * rng.standard_normal((n, 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    return d * depth, normals


@dataclass
class SubjectModel:
    """One subject's truth: lead fields, waveforms and the information window."""

    leadfield: np.ndarray  # (n_channels, n_sources + 2 ERP + n_noise)
    waveforms: np.ndarray  # (n_sources + 2, n_wave_samples), from onset
    wave_times: np.ndarray
    ch_names: list[str]


def subject_model(params: MeegSyntheticParams, subject_index: int, info) -> SubjectModel:
    """Dipoles, lead field and response waveforms of one subject."""
    rng = _rng(params, _TAG_SOURCES, subject_index)
    pos_s, nn_s = _directions(rng, params.n_sources + 2, posterior=True)
    pos_n, nn_n = _directions(rng, params.n_noise_sources, posterior=False)
    lf = leadfield(info, np.concatenate([pos_s, pos_n]), np.concatenate([nn_s, nn_n]))
    times = np.arange(int(round(0.8 * params.sfreq)) + 1) / params.sfreq
    lo, hi = params.window_start_s, params.window_end_s
    waves = []
    for _ in range(params.n_sources):
        half = min(rng.uniform(0.03, 0.06), (hi - lo) / 2)
        centre = rng.uniform(lo + half, hi - half)
        waves.append(_bump(times, centre, half))
    waves.append(_bump(times, 0.10, 0.04))  # P1-like, the same for every stimulus
    waves.append(-_bump(times, 0.17, 0.05))  # N1-like
    return SubjectModel(lf, np.stack(waves), times, list(info["ch_names"]))


def _schedule(
    params: MeegSyntheticParams, numbers: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, int]:
    """RSVP onsets (samples) and stim values (image numbers, 99999 at targets)."""
    order = rng.permutation(numbers)
    values: list[int] = []
    onsets: list[float] = []
    t = 1.0
    for start in range(0, len(order), params.sequence_length):
        seq = list(order[start : start + params.sequence_length])
        for _ in range(params.targets_per_sequence):
            seq.insert(int(rng.integers(len(seq) + 1)), things_eeg2.TARGET_EVENT)
        for v in seq:
            onsets.append(t)
            values.append(int(v))
            t += params.soa_s
        t += params.gap_s
    n_samples = int(np.ceil((t + 1.0) * params.sfreq))
    return np.round(np.asarray(onsets) * params.sfreq).astype(int), np.asarray(values), n_samples


def simulate_recording(
    params: MeegSyntheticParams,
    model: SubjectModel,
    latent: np.ndarray,
    numbers: np.ndarray,
    rng: np.random.Generator,
    dtype: type = np.float64,
    stim_row: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """One continuous recording: ``(data (n_channels, n_samples), stim (n_samples,))``.

    ``latent[i]`` is the latent response of image number ``numbers[i]``; each image is
    shown once per entry of ``numbers`` (repeat numbers to repeat images). With
    ``stim_row`` the data get one more row holding the stim channel (THINGS-EEG2's layout,
    without a copy of a recording-sized array).
    """
    onsets, values, n_samples = _schedule(params, numbers, rng)
    row = {int(n): i for i, n in enumerate(np.unique(numbers))}
    lat = (
        latent[[row.get(int(v), 0) for v in values]] * (values != things_eeg2.TARGET_EVENT)[:, None]
    )
    jitter = 1.0 + 0.1 * rng.standard_normal(lat.shape)
    n_src = params.n_sources
    sources = np.zeros((n_src + 2, n_samples))
    for j in range(n_src + 2):
        impulses = np.zeros(n_samples)
        amp = params.signal_uv * lat[:, j] * jitter[:, j] if j < n_src else params.erp_uv
        np.add.at(impulses, onsets, amp)
        sources[j] = oaconvolve(impulses, model.waveforms[j])[:n_samples]
    noise = lfilter([1.0], [1.0, -0.95], rng.standard_normal((params.n_noise_sources, n_samples)))
    noise *= params.noise_uv * np.sqrt(1 - 0.95**2)
    n_ch = model.leadfield.shape[0]
    data = np.empty((n_ch + int(stim_row), n_samples))
    step = 1 << 18
    for s in range(0, n_samples, step):
        data[:n_ch, s : s + step] = model.leadfield[:, : n_src + 2] @ sources[:, s : s + step]
        data[:n_ch, s : s + step] += model.leadfield[:, n_src + 2 :] @ noise[:, s : s + step]
    del sources, noise
    block = 8  # channels at a time (the same draws as one call: rows are filled in order)
    for c in range(0, n_ch, block):
        e = min(c + block, n_ch)
        data[c:e] += params.sensor_noise_uv * rng.standard_normal((e - c, n_samples))
    for c in range(0, n_ch, block):
        e = min(c + block, n_ch)
        data[c:e] += np.cumsum(rng.standard_normal((e - c, n_samples)), axis=1) * (
            2.0 / np.sqrt(n_samples)
        )
    stim_ch = np.zeros(n_samples)
    stim_ch[onsets] = values
    data[:n_ch] *= 1e-6 if params.modality == "eeg" else 1e-14  # µV -> V; MEG: ~100 fT
    if stim_row:
        data[n_ch] = stim_ch
    return data.astype(dtype, copy=False), stim_ch


def generate(root: str | Path, params: MeegSyntheticParams) -> Path:
    """Write the synthetic world to ``root`` (a THINGS-EEG2 or BIDS MEG layout)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stimuli = make_stimuli(params)
    images_dir = root / "stimuli" / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rendered = []
    for n, row in stimuli.iterrows():
        factors = stim.StimulusFactors(
            row["category"], row["superordinate"], row["colour"], row["size"],
            row["x"], row["y"], row["orientation"],
        )  # fmt: skip
        image = stim.render_image(factors, params.image_size, _rng(params, _TAG_STIM, n, 1))
        Image.fromarray(image, mode="RGB").save(root / "stimuli" / row["image"], format="PNG")
        rendered.append(image)
    stimuli.to_csv(root / "stimuli" / "stimuli.tsv", sep="\t", index=False)
    latent = latent_responses(params, stimuli, np.stack(rendered))
    info = (
        eeg_info(params.sfreq)
        if params.modality == "eeg"
        else meg_info(params.sfreq, params.n_meg_channels)
    )
    for s, subject in enumerate(subject_ids(params)):
        model = subject_model(params, s, info)
        for k, session in enumerate(session_ids(params)):
            for partition, split in things_eeg2.PARTITIONS.items():
                part = stimuli[stimuli["split"] == split]
                reps = (
                    params.train_reps_per_session
                    if split == "train"
                    else (params.test_reps_per_session)
                )
                numbers = np.tile(part["number"].to_numpy(), reps)
                rng = _rng(params, _TAG_SESSION, s, k, int(split == "test"))
                data, stim_ch = simulate_recording(
                    params, model, latent[part.index.to_numpy()], numbers, rng
                )
                if params.modality == "eeg":
                    things_eeg2.write_raw_dict(
                        things_eeg2.raw_path(root / "raw_data", subject, session, partition),
                        data, stim_ch, list(things_eeg2.CHANNELS), params.sfreq,
                    )  # fmt: skip
                else:
                    from brainpipe.meeg import bids_meg

                    run = "01" if split == "train" else "02"
                    bids_meg.write_run(
                        root, subject, session, run, info, data, stim_ch, split, task=MEG_TASK
                    )
        _write_truth(root, params, subject, model, latent, stimuli)
    if params.modality == "meg":
        from brainpipe.meeg import bids_meg

        bids_meg.finish_dataset(root, "brainpipe synthetic THINGS-MEG-like dataset")
    desc = {
        "Name": f"brainpipe synthetic M/EEG world ({params.modality})",
        "GeneratedBy": [{"Name": "brainpipe", "Version": __version__}],
        "SyntheticMeegParams": asdict(params),
    }
    gt = root / "derivatives" / "groundtruth"
    gt.mkdir(parents=True, exist_ok=True)
    (gt / "dataset_description.json").write_text(
        json.dumps({**desc, "BIDSVersion": "1.9.0", "DatasetType": "derivative"}, indent=1)
    )
    if params.modality == "eeg":
        (root / "dataset_description.json").write_text(json.dumps(desc, indent=1))
    return root


def truth_path(root: str | Path, subject: str) -> Path:
    return Path(root, "derivatives", "groundtruth", f"sub-{subject}", "truth.zarr")


def _write_truth(
    root: Path,
    params: MeegSyntheticParams,
    subject: str,
    model: SubjectModel,
    latent: np.ndarray,
    stimuli: pd.DataFrame,
) -> None:
    import xarray as xr

    from brainpipe.storage import write_zarr

    n_src = params.n_sources
    sources = [f"stim{j:02d}" for j in range(n_src)] + ["erp_p1", "erp_n1"]
    ds = xr.Dataset(
        {
            "latent": (("stimulus", "source"), latent.astype(np.float32)),
            "waveform": (("all_source", "time"), model.waveforms.astype(np.float32)),
            "leadfield": (("channel", "all_source"), model.leadfield[:, : n_src + 2]),
        },
        coords={
            "stimulus": stimuli["stimulus"].to_numpy().astype(object),
            "source": sources[:n_src],
            "all_source": sources,
            "time": model.wave_times,
            "channel": np.asarray(model.ch_names, dtype=object),
        },
        attrs={
            "window_start_s": params.window_start_s,
            "window_end_s": params.window_end_s,
            "params": json.dumps(asdict(params)),
        },
    )
    write_zarr(ds, truth_path(root, subject))


def information_window(root: str | Path) -> tuple[float, float] | None:
    """The world's true information window (s), or None if ``root`` is no synthetic world."""
    path = Path(root, "derivatives", "groundtruth", "dataset_description.json")
    if not path.is_file():
        return None
    params = json.loads(path.read_text()).get("SyntheticMeegParams") or {}
    if "window_start_s" not in params:
        return None
    return float(params["window_start_s"]), float(params["window_end_s"])


def load_truth(root: str | Path, subject: str):
    """The truth store of ``subject`` (see the module docstring)."""
    from brainpipe.storage import open_zarr

    return open_zarr(truth_path(root, subject))
