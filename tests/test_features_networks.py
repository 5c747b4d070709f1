"""Pretrained-network features: real architectures, the real weight-loading paths, the
weight cache checks, streamed extraction, out-of-core PCA fitted on training stimuli only.

No hub access: the hub libraries run with HF_HUB_OFFLINE=1, and every weight file is a
random state dict of the real architecture written where its library looks — torch hub's
``checkpoints/`` folder, or the Hugging Face hub cache layout (``models--org--name/blobs/``
named by ETag, ``snapshots/<commit>/<file>`` links, ``refs/main``), as described in
huggingface_hub's "Manage huggingface_hub cache-system" guide.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from brainpipe.errors import BrainpipeInputError
from brainpipe.features.extract import batch_size_for, build_network_store
from brainpipe.features.networks import (
    NETWORKS,
    WeightFile,
    get_network,
    hf_cache_dir,
)
from brainpipe.features.pca import fit_pca, fit_pca_out_of_core
from brainpipe.features.weights import (
    FETCH_COMMAND,
    check_weights_present,
    fetch_file,
    git_blob_sha1,
    verify_file,
)
from brainpipe.storage import open_zarr

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    torch.set_num_threads(2)


def _write_images(root: Path, n: int = 10, n_test: int = 3, test_seed: int = 0) -> list[np.ndarray]:
    stim = root / "stimuli"
    (stim / "images").mkdir(parents=True, exist_ok=True)
    rows, images = [], []
    for i in range(n):
        test = i >= n - n_test
        rng = np.random.default_rng((100 + test_seed if test else 0, i))
        img = (rng.random((48, 48, 3)) * 255).astype(np.uint8)
        images.append(img)
        Image.fromarray(img).save(stim / "images" / f"s{i}.png")
        rows.append({"stimulus": f"s{i}", "image": f"images/s{i}.png", "caption": f"red star {i}"})
    pd.DataFrame(rows).to_csv(stim / "stimuli.tsv", sep="\t", index=False)
    split = ["train"] * (n - n_test) + ["test"] * n_test
    pd.DataFrame({"stimulus": [r["stimulus"] for r in rows], "split": split}).to_csv(
        root / "splits.tsv", sep="\t", index=False
    )
    return images


def put_in_hub_cache(cache: Path, repo_id: str, files: dict[str, bytes]) -> None:
    """Lay ``files`` out as huggingface_hub's cache does (blobs named by ETag)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    for name, data in files.items():
        lfs = name.endswith((".safetensors", ".bin", ".pth"))
        etag = (
            hashlib.sha256(data).hexdigest()
            if lfs
            else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        )
        blob = repo / "blobs" / etag
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)


def _safetensors_bytes(state: dict) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in state.items()})


# --------------------------------------------------------------------------- registry


def test_registry_has_the_libraries_networks():
    want = {"alexnet", "resnet50", "vitb16", "clipvitb32", "clipvitb32text", "bert", "dinov2"}
    assert want | {"motionenergy"} <= set(NETWORKS)
    libs = {NETWORKS[n].library for n in NETWORKS}
    assert {"torchvision", "open_clip", "transformers", "pymoten"} <= libs


@pytest.mark.parametrize("name", ["alexnet", "vitb16"])
def test_torchvision_random_init_reads_layers(name):
    net = get_network(name)
    loaded = net.builder(False, None, 0)
    img = Image.fromarray(np.zeros((60, 80, 3), dtype=np.uint8))
    batch = loaded.collate([loaded.preprocess(img), loaded.preprocess(img)])
    assert batch.shape == (2, 3, 224, 224)  # the model's own preprocessing
    outs = loaded.forward(batch, list(net.default_layers), "cpu")
    assert set(outs) == set(net.default_layers)
    assert all(o.shape[0] == 2 for o in outs.values())


# --------------------------------------------------------------------------- weight loading


def test_resnet50_loads_a_state_dict_from_the_torch_hub_cache(tmp_path):
    import torchvision

    net = get_network("resnet50")
    (wf,) = net.weight_files(tmp_path / "w")
    assert wf.path.parent == tmp_path / "w" / "torch" / "hub" / "checkpoints"
    cfg = {"weights_dir": str(tmp_path / "w"), "networks": {"r": {"network": "resnet50"}}}
    with pytest.raises(BrainpipeInputError) as err:
        check_weights_present(cfg, ["r"])
    assert str(wf.path) in str(err.value) and FETCH_COMMAND in str(err.value)

    torch.manual_seed(7)
    state = torchvision.models.resnet50().state_dict()
    wf.path.parent.mkdir(parents=True)
    torch.save(state, wf.path)
    check_weights_present(cfg, ["r"])  # present now
    loaded = net.builder(True, tmp_path / "w", 0)  # torchvision's own loading code
    got = loaded.module.state_dict()
    for key in ("conv1.weight", "layer4.2.conv3.weight", "fc.bias"):
        assert torch.equal(got[key], state[key])
    # a random file does not carry the published checksum: the weights rule refuses it
    with pytest.raises(BrainpipeInputError, match="does not match the published"):
        verify_file(wf)


def test_clip_towers_load_open_clip_weights_from_the_hub_cache(tmp_path):
    import open_clip

    torch.manual_seed(3)
    model, _, _ = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    state = model.state_dict()
    cache = hf_cache_dir(tmp_path)
    put_in_hub_cache(
        cache,
        "laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
        {"open_clip_model.safetensors": _safetensors_bytes(state)},
    )
    (wf,) = get_network("clipvitb32").weight_files(tmp_path)
    assert wf.path.is_file()
    verify_file(wf)  # SHA-256 equals the blob's ETag name
    image = get_network("clipvitb32").builder(True, tmp_path, 0)
    key = "visual.transformer.resblocks.3.mlp.c_fc.weight"
    assert torch.equal(image.module.state_dict()[key], state[key])
    img = Image.fromarray(np.full((40, 40, 3), 128, dtype=np.uint8))
    outs = image.forward(image.collate([image.preprocess(img)]), ["block5", "embedding"], "cpu")
    assert outs["block5"].shape == (1, 50, 768) and outs["embedding"].shape == (1, 512)
    text = get_network("clipvitb32text").builder(True, tmp_path, 0)
    outs = text.forward(text.collate([text.preprocess("a red star")]), ["embedding"], "cpu")
    assert outs["embedding"].shape == (1, 512)


def test_dinov2_and_bert_load_from_the_hub_cache(tmp_path):
    import transformers

    cache = hf_cache_dir(tmp_path)
    torch.manual_seed(5)
    dino_cfg = transformers.Dinov2Config()  # the defaults are dinov2-base's architecture
    dino = transformers.Dinov2Model(dino_cfg)
    # preprocessor_config.json as published in facebook/dinov2-base on the hub
    preproc = {
        "crop_size": {"height": 224, "width": 224},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.485, 0.456, 0.406],
        "image_processor_type": "BitImageProcessor",
        "image_std": [0.229, 0.224, 0.225],
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"shortest_edge": 256},
    }
    put_in_hub_cache(
        cache,
        "facebook/dinov2-base",
        {
            "config.json": dino_cfg.to_json_string().encode(),
            "preprocessor_config.json": json.dumps(preproc).encode(),
            "model.safetensors": _safetensors_bytes(dino.state_dict()),
        },
    )
    for wf in get_network("dinov2").weight_files(tmp_path):
        verify_file(wf)  # git blob SHA-1 for small files, SHA-256 for LFS ones
    loaded = get_network("dinov2").builder(True, tmp_path, 0)
    key = "encoder.layer.5.mlp.fc1.weight"
    assert torch.equal(loaded.module.state_dict()[key], dino.state_dict()[key])
    img = Image.fromarray(np.zeros((300, 260, 3), dtype=np.uint8))
    outs = loaded.forward(loaded.collate([loaded.preprocess(img)]), ["hidden12"], "cpu")
    assert outs["hidden12"].shape == (1, 1 + 16 * 16, 768)  # class token + 14-px patches

    bert_cfg = transformers.BertConfig()  # bert-base-uncased's architecture
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "red", "star", "blue", "circle"]
    bert_cfg.vocab_size = len(words)
    bert = transformers.BertModel(bert_cfg)
    put_in_hub_cache(
        cache,
        "google-bert/bert-base-uncased",
        {
            "config.json": bert_cfg.to_json_string().encode(),
            "tokenizer_config.json": json.dumps({"do_lower_case": True}).encode(),
            "vocab.txt": ("\n".join(words) + "\n").encode(),
            "model.safetensors": _safetensors_bytes(bert.state_dict()),
        },
    )
    text = get_network("bert").builder(True, tmp_path, 0)
    key = "encoder.layer.11.output.dense.weight"
    assert torch.equal(text.module.state_dict()[key], bert.state_dict()[key])
    outs = text.forward(text.collate(["red star", "blue circle star"]), ["hidden8"], "cpu")
    assert outs["hidden8"].shape[0] == 2 and outs["hidden8"].shape[2] == 768


def test_verify_and_fetch_over_loopback(tmp_path):
    payload = os.urandom(4096)
    sha = hashlib.sha256(payload).hexdigest()
    served = tmp_path / "served"
    served.mkdir()
    name = f"tiny-{sha[:8]}.pth"
    (served / name).write_bytes(payload)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(served), **k)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{name}"
        wf = WeightFile(tmp_path / "cache" / name, url, f"sha256-prefix:{sha[:8]}")
        fetch_file(wf)
        assert verify_file(wf) == sha
        bad = WeightFile(tmp_path / "cache" / name, url, "sha256:" + "0" * 64)
        with pytest.raises(BrainpipeInputError, match="checksum"):
            verify_file(bad)
    finally:
        server.shutdown()
    small = tmp_path / "config.json"
    small.write_text("{}")
    assert git_blob_sha1(small) == "9e26dfeeb6e641a33dae4961196235bdb965b21b"  # git hash-object


# --------------------------------------------------------------------------- the store


def _alexnet_cfg(**extra):
    return {
        "n_components": 4,
        "batch_size": 4,
        "num_workers": 1,
        "networks": {
            "alex": {
                "network": "alexnet",
                "layers": ["features.5", "features.12", "classifier.5"],
                "tokens": ["features.12"],
                "weights": "random",
                "seed": 1,
            }
        },
        **extra,
    }


def test_network_store_layout_fp16_and_no_leakage(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _write_images(a, test_seed=0)
    _write_images(b, test_seed=1)  # same training images, different test images
    stores = []
    for root in (a, b):
        out = build_network_store(
            "alex",
            root / "stimuli" / "stimuli.tsv",
            root / "splits.tsv",
            root / "features" / "alex.zarr",
            _alexnet_cfg(),
            threads=2,
            mem_mb=2000,
        )
        stores.append(open_zarr(out).load())
    ds = stores[0]
    assert ds["features_5"].dims == ("stimulus", "features_5_component")
    assert ds["features_12_tokens"].shape == (10, 36, 256)  # 6x6 positions, 256 channels
    assert ds["features_12_tokens"].dtype == np.float16
    np.testing.assert_array_equal(ds["features"].values, ds["classifier_5"].values)
    info = ds.attrs["layer_info"]
    for lay in ("features_5", "features_12", "classifier_5"):
        assert info[lay]["dtype"] == "float16"
        assert info[lay]["fp16_relative_error"] < 1e-3  # measured on every stimulus
        for var in ("pca_mean", "pca_components", "explained_variance_ratio"):
            np.testing.assert_array_equal(
                stores[0][f"{lay}_{var}"].values, stores[1][f"{lay}_{var}"].values
            )
        train = ds["split"].values == "train"
        np.testing.assert_array_equal(stores[0][lay].values[train], stores[1][lay].values[train])
        assert not np.allclose(stores[0][lay].values[~train], stores[1][lay].values[~train])
    assert not any(p.name.endswith(".raw") for p in (a / "features").iterdir())


def test_hdf5_brick_streams_by_index_like_the_image_folder(tmp_path):
    h5py = pytest.importorskip("h5py")
    images = _write_images(tmp_path)
    # NSD's nsd_stimuli.hdf5 keeps its images as /imgBrick (n, 425, 425, 3) uint8
    brick = np.zeros((len(images) + 2, 48, 48, 3), dtype=np.uint8)
    order = np.arange(len(images))[::-1] + 2  # rows out of order, with unused rows
    for i, row in enumerate(order):
        brick[row] = images[i]
    with h5py.File(tmp_path / "stimuli" / "brick.hdf5", "w") as h5:
        h5.create_dataset("imgBrick", data=brick, chunks=(1, 48, 48, 3))
    table = pd.read_csv(tmp_path / "stimuli" / "stimuli.tsv", sep="\t")
    table = table.drop(columns="image").assign(image_hdf5="brick.hdf5", image_index=order)
    table.to_csv(tmp_path / "stimuli" / "h5.tsv", sep="\t", index=False)
    cfg = _alexnet_cfg()
    stim_dir = tmp_path / "stimuli"
    folder = build_network_store(
        "alex", stim_dir / "stimuli.tsv", tmp_path / "splits.tsv", tmp_path / "f.zarr", cfg
    )
    hdf5 = build_network_store(
        "alex", stim_dir / "h5.tsv", tmp_path / "splits.tsv", tmp_path / "h.zarr", cfg
    )
    np.testing.assert_allclose(
        open_zarr(folder)["features"].values, open_zarr(hdf5)["features"].values, atol=1e-4
    )
    table.loc[0, "image_index"] = 99
    table.to_csv(stim_dir / "h5.tsv", sep="\t", index=False)
    with pytest.raises(BrainpipeInputError, match="row 99 is past"):
        build_network_store(
            "alex", stim_dir / "h5.tsv", tmp_path / "splits.tsv", tmp_path / "x.zarr", cfg
        )


def test_motion_energy_of_videos(tmp_path):
    cv2 = pytest.importorskip("cv2")
    stim = tmp_path / "stimuli"
    stim.mkdir()
    rows = []
    for i, speed in enumerate([0, 1, 2, 3]):
        path = stim / f"v{i}.avi"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 24, (64, 64))
        x = np.arange(64)
        for t in range(12):
            frame = 127 + 120 * np.sin(2 * np.pi * (x - speed * t) / 16)
            writer.write(np.repeat(np.tile(frame, (64, 1))[..., None], 3, 2).astype(np.uint8))
        writer.release()
        rows.append({"stimulus": f"v{i}", "video": path.name})
    pd.DataFrame(rows).to_csv(stim / "stimuli.tsv", sep="\t", index=False)
    pd.DataFrame(
        {"stimulus": [r["stimulus"] for r in rows], "split": ["train"] * 3 + ["test"]}
    ).to_csv(tmp_path / "splits.tsv", sep="\t", index=False)
    cfg = {"n_components": 2, "num_workers": 0, "networks": {"moten": {"network": "motionenergy"}}}
    out = build_network_store(
        "moten", stim / "stimuli.tsv", tmp_path / "splits.tsv", tmp_path / "m.zarr", cfg
    )
    ds = open_zarr(out)
    assert ds["energy"].shape == (4, 2) and np.isfinite(ds["energy"].values).all()
    assert ds.attrs["layer_info"]["energy"]["n_features"] > 100  # pymoten's pyramid


# --------------------------------------------------------------------------- PCA, sizes


def test_out_of_core_pca_matches_exact_on_training_rows():
    rng = np.random.default_rng(0)
    n, p, k = 300, 2000, 5
    X = (rng.standard_normal((n, k)) * [20, 15, 10, 6, 3]) @ rng.standard_normal((k, p))
    X += rng.standard_normal((n, p))
    train = rng.random(n) < 0.7

    def blocks():
        for s in range(0, n, 64):
            yield s, X[s : s + 64]

    exact = fit_pca(X[train], k)
    randomized = fit_pca_out_of_core(blocks, train, p, k, exact_max_features=1000)
    covariance = fit_pca_out_of_core(blocks, train, p, k, exact_max_features=10_000)
    for got in (randomized, covariance):
        np.testing.assert_allclose(got.mean, exact.mean, atol=1e-5)  # float32 blocks
        overlap = np.abs(np.sum(got.components * exact.components, axis=1))
        assert overlap.min() > 0.999
        np.testing.assert_allclose(
            got.explained_variance_ratio, exact.explained_variance_ratio, rtol=1e-3
        )
    X2 = X.copy()
    X2[~train] = rng.standard_normal(((~train).sum(), p)) * 100  # other test stimuli

    def blocks2():
        for s in range(0, n, 64):
            yield s, X2[s : s + 64]

    again = fit_pca_out_of_core(blocks2, train, p, k, exact_max_features=1000)
    np.testing.assert_array_equal(again.components, randomized.components)
    np.testing.assert_array_equal(again.mean, randomized.mean)
    # few training rows: the range finder spans them all, so it is exact as well
    few = np.zeros(n, dtype=bool)
    few[:12] = True
    small = fit_pca_out_of_core(blocks, few, p, k, exact_max_features=10_000)
    exact_few = fit_pca(X[few], k)
    overlap = np.abs(np.sum(small.components * exact_few.components, axis=1))
    assert overlap.min() > 0.999


def test_batch_size_follows_memory():
    small = batch_size_for(24 << 20, mem_mb=1000, model_bytes=100 << 20)
    large = batch_size_for(24 << 20, mem_mb=16000, model_bytes=100 << 20)
    assert 1 <= small < large <= 256


def test_missing_weights_stop_snakemake_before_any_job(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        json.dumps(
            {
                "results_dir": str(tmp_path / "results"),
                "data_dir": str(tmp_path / "data"),
                "feature_models": ["gabor", "resnet"],
                "features": {
                    "weights_dir": str(tmp_path / "nowhere"),
                    "networks": {"resnet": {"network": "resnet50"}},
                },
            }
        )
    )
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", str(cfg)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "resnet50-11ad3fa6.pth" in out and FETCH_COMMAND in out
    # the fetch command's own DAG is not stopped: it plans the fetch
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "weights"]
        + ["--configfile", str(cfg)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "fetch_weights" in proc.stdout


# --------------------------------------------------------------------------- ground truth


def test_synthetic_world_from_a_layer_has_that_layer_best_in_v1_and_v4(tmp_path):
    """Responses generated from AlexNet features.5 (random init): ridge on features.5
    beats the other layers and the hand-made Gabor features in V1, the ROI the layer drives."""
    from brainpipe.datasets.synthetic import SyntheticParams, generate, load_ground_truth
    from brainpipe.features.pca import build_feature_store
    from brainpipe.metrics import pearson_r
    from brainpipe.ridge import RidgeCVEncoder

    params = SyntheticParams(
        seed=3,
        n_subjects=1,
        n_sessions=3,
        n_runs=3,
        trials_per_run=40,
        n_shared=30,
        max_repeats=2,
        trial_noise_sd=0.5,
        response_network="alexnet",
        response_layer="features.5",
    )
    root = tmp_path / "synthetic"
    generate(root, params)
    table = pd.read_csv(root / "stimuli" / "stimuli.tsv", sep="\t")
    splits = tmp_path / "splits.tsv"
    pd.DataFrame(
        {"stimulus": table["stimulus"], "split": np.where(table["shared"] == 1, "test", "train")}
    ).to_csv(splits, sep="\t", index=False)
    layers = ["features.2", "features.5", "features.12", "classifier.5"]
    cfg = {
        "n_components": 48,
        "num_workers": 0,
        "networks": {
            "alex": {"network": "alexnet", "layers": layers, "weights": "random", "seed": 3}
        },
    }
    tsv = root / "stimuli" / "stimuli.tsv"
    alex = open_zarr(build_network_store("alex", tsv, splits, tmp_path / "alex.zarr", cfg)).load()
    gabor = open_zarr(
        build_feature_store("gabor", tsv, splits, tmp_path / "gabor.zarr", n_components=48)
    ).load()
    candidates = {lay: alex[lay] for lay in ("features_2", "features_5", "features_12")}
    candidates["classifier_5"] = alex["classifier_5"]
    candidates["gabor"] = gabor["features"]

    gt = load_ground_truth(root, "01")
    trial_stim = gt["stimulus"].values.astype(str)
    stims = np.unique(trial_stim)
    codes = pd.Index(stims).get_indexer(trial_stim)
    amp = gt["amplitude"].values.astype(np.float64)
    Y = np.stack([amp[codes == i].mean(axis=0) for i in range(len(stims))])
    test = np.isin(stims, table.loc[table["shared"] == 1, "stimulus"].astype(str))
    roi = np.asarray(gt["roi"].values, dtype=object).astype(str)
    scores: dict[str, dict[str, float]] = {}
    for name, feats in candidates.items():
        X = feats.sel(stimulus=stims).values.astype(np.float64)
        for region in ("V1", "V4"):
            y = Y[:, roi == region]
            model = RidgeCVEncoder(alphas=np.logspace(-2, 5, 15)).fit(X[~test], y[~test])
            r = pearson_r(y[test], model.predict(X[test]))
            scores.setdefault(region, {})[name] = float(np.nanmean(r))
    # V1 loads on the low-level block only (the layer's components); V4 mixes in colour
    best = max(scores["V1"], key=scores["V1"].get)
    assert best == "features_5", scores
    assert scores["V1"]["features_5"] > scores["V1"]["gabor"] + 0.05, scores


def test_snakemake_weights_rule_and_a_network_feature_job(tmp_path):
    """Real Snakemake runs: `weights` verifies a cached hub file and writes its manifest;
    a network's feature store is built from the synthetic dataset's stimuli."""
    import open_clip

    wdir = tmp_path / "weights"
    torch.manual_seed(0)
    model, _, _ = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    blob = _safetensors_bytes(model.state_dict())
    put_in_hub_cache(
        hf_cache_dir(wdir),
        "laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
        {"open_clip_model.safetensors": blob},
    )
    del model
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        json.dumps(
            {
                "results_dir": str(tmp_path / "results"),
                "data_dir": str(tmp_path / "data"),
                "subjects": ["01"],
                "sessions": ["01"],
                "runs": ["01", "02"],
                "synthetic": {"n_subjects": 1, "n_sessions": 1, "n_runs": 2, "n_shared": 8},
                "feature_models": ["alex", "gabor"],
                "features": {
                    "n_components": 8,
                    "weights_dir": str(wdir),
                    "networks": {
                        "alex": {
                            "network": "alexnet",
                            "layers": ["features.5", "classifier.5"],
                            "tokens": ["features.5"],
                            "weights": "random",
                        },
                        "clip": {"network": "clipvitb32", "layers": ["embedding"]},
                    },
                },
            }
        )
    )
    run = [sys.executable, "-m", "snakemake", "--cores", "2"]
    proc = subprocess.run(
        [*run, "weights", "--configfile", str(cfg)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = json.loads((tmp_path / "results" / "weights" / "clip.json").read_text())
    assert manifest["files"][0]["sha256"] == hashlib.sha256(blob).hexdigest()
    target = tmp_path / "results" / "synthetic" / "features" / "alex.zarr"
    proc = subprocess.run(
        [*run, str(target), "--configfile", str(cfg)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ds = open_zarr(target)
    assert ds["features"].dims == ("stimulus", "feature")
    assert ds["features_5_tokens"].shape[1:] == (13 * 13, 192)
    assert set(ds["split"].values) <= {"train", "test", "unassigned"}
    assert ds.attrs["n_fit_stimuli"] == int((ds["split"].values == "train").sum())
