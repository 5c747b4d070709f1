"""Feature extraction and out-of-core PCA: whole-process speed and peak memory.

1. ResNet-50 (torchvision, random-initialised: speed does not depend on the weights' values)
   on ``--n-images`` JPEG images (425 × 425, NSD's size, preprocessed to 224 px) on the
   CPU: brainpipe's feature job (``build_network_store``: DataLoader workers decoding
   while the network runs batches, float16 store, PCA) against a plain per-image loop
   with the same model (open, preprocess, forward one image, collect). Both run as
   separate processes in the same run; images/s counts the whole process (imports and
   model build included) and peak RSS covers the process tree (loader workers included).
2. Out-of-core PCA of a ``--pca-rows`` × ``--pca-features`` float16 layer (20,000 ×
   200,000 = 8 GB by default) written in chunks to a Zarr array laid out as the feature
   job writes it (planted rank-20 signal plus noise), fitted on the training rows
   (90 %) with ``fit_pca_out_of_core`` within ``--mem-mb``, every row projected.

Run heavy (``python benchmarks/features.py``); results go to
``benchmarks/results/features.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import measure  # noqa: E402

HERE = Path(__file__).resolve().parent


def make_images(root: Path, n: int, size: int = 425) -> None:
    """``n`` JPEG images with some structure (smooth noise), a stimuli table and splits."""
    import pandas as pd
    from PIL import Image
    from scipy import ndimage

    stim = root / "stimuli"
    if (stim / "stimuli.tsv").is_file() and len(list((stim / "images").iterdir())) == n:
        return
    (stim / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        img = ndimage.gaussian_filter(rng.random((size // 4, size // 4, 3)), (2, 2, 0))
        img = np.kron(img, np.ones((4, 4, 1)))[:size, :size]
        img = ((img - img.min()) / (np.ptp(img) + 1e-9) * 255).astype(np.uint8)
        Image.fromarray(img).save(stim / "images" / f"img{i:05d}.jpg", quality=90)
        rows.append({"stimulus": f"img{i:05d}", "image": f"images/img{i:05d}.jpg"})
    pd.DataFrame(rows).to_csv(stim / "stimuli.tsv", sep="\t", index=False)
    split = np.where(np.arange(n) % 10 == 9, "test", "train")
    pd.DataFrame({"stimulus": [r["stimulus"] for r in rows], "split": split}).to_csv(
        root / "splits.tsv", sep="\t", index=False
    )


def run_batched(root: Path, threads: int, mem_mb: int) -> None:
    from brainpipe.features.extract import build_network_store

    cfg = {
        "n_components": 64,
        "device": "cpu",
        "networks": {"resnet": {"network": "resnet50", "layers": ["avgpool"], "weights": "random"}},
    }
    build_network_store(
        "resnet",
        root / "stimuli" / "stimuli.tsv",
        root / "splits.tsv",
        root / "out" / "resnet.zarr",
        cfg,
        threads=threads,
        mem_mb=mem_mb,
    )


def run_loop(root: Path, threads: int) -> None:
    import pandas as pd
    import torch
    import torchvision
    from PIL import Image
    from torchvision.models.feature_extraction import create_feature_extractor

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    fx = create_feature_extractor(model, {"avgpool": "avgpool"})
    preprocess = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.transforms()
    table = pd.read_csv(root / "stimuli" / "stimuli.tsv", sep="\t")
    feats = []
    with torch.inference_mode():
        for rel in table["image"]:
            with Image.open(root / "stimuli" / rel) as im:
                x = preprocess(im.convert("RGB"))
            feats.append(fx(x[None])["avgpool"].reshape(-1).numpy())
    np.save(root / "loop.npy", np.stack(feats))


def make_layer(path: Path, n: int, p: int, rank: int = 20, block: int = 500) -> None:
    """A float16 ``(n, p)`` Zarr array (planted rank-``rank`` signal + unit noise), in chunks."""
    import zarr

    if (path / "zarr.json").is_file():
        return
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    rows = max(1, (32 << 20) // (p * 2))  # the feature job's chunking
    arr = zarr.create_array(
        str(tmp), shape=(n, p), chunks=(rows, p), dtype="float16", compressors=None
    )
    rng = np.random.default_rng(1)
    basis = rng.standard_normal((rank, p)).astype(np.float32) / np.sqrt(p) * 40
    scales = np.geomspace(8, 1, rank).astype(np.float32)
    for s in range(0, n, block):
        b = min(block, n - s)
        z = rng.standard_normal((b, rank), dtype=np.float32) * scales
        x = z @ basis + rng.standard_normal((b, p), dtype=np.float32)
        arr[s : s + b] = x.astype(np.float16)
    os.replace(tmp, path)


def run_pca(path: Path, mem_mb: int, n_components: int) -> None:
    import zarr

    from brainpipe.compute import chunk_size_for
    from brainpipe.features.pca import fit_pca_out_of_core, transform_blocks

    arr = zarr.open_array(str(path), mode="r")
    n, p = arr.shape
    # as build_network_store sizes it
    rows = chunk_size_for(mem_mb, p * 4, overhead_mb=0, multiplier=16, n_items=n)

    def blocks():
        for s in range(0, n, rows):
            yield s, arr[s : s + rows]

    train = np.arange(n) % 10 != 9
    t0 = time.perf_counter()
    params = fit_pca_out_of_core(blocks, train, p, n_components)
    fit_s = time.perf_counter() - t0
    scores = transform_blocks(params, blocks, n)
    out = {
        "fit_s": fit_s,
        "transform_s": time.perf_counter() - t0 - fit_s,
        "rows_per_block": rows,
        "explained_variance_ratio_top20": float(params.explained_variance_ratio[:20].sum()),
        "scores_shape": list(scores.shape),
    }
    (path.parent / "pca_result.json").write_text(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", default="all")
    ap.add_argument("--work", type=Path, default=Path("/tmp/brainpipe-bench-features"))
    ap.add_argument("--n-images", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mem-mb", type=int, default=4000)
    ap.add_argument("--pca-rows", type=int, default=20000)
    ap.add_argument("--pca-features", type=int, default=200000)
    ap.add_argument("--n-components", type=int, default=64)
    ap.add_argument("--skip", nargs="*", default=[], choices=["extract", "pca"])
    ap.add_argument("--out", type=Path, default=HERE / "results" / "features.json")
    args = ap.parse_args()
    images = args.work / "images"
    layer = args.work / "layer.zarr"
    if args.mode == "batched":
        return run_batched(images, args.threads, args.mem_mb)
    if args.mode == "loop":
        return run_loop(images, args.threads)
    if args.mode == "pca":
        return run_pca(layer, args.mem_mb, args.n_components)

    me = [sys.executable, str(Path(__file__).resolve())]
    common = ["--work", str(args.work), "--threads", str(args.threads)]
    common += ["--mem-mb", str(args.mem_mb)]
    result: dict = {
        "command": " ".join(sys.argv),
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "mem_mb": args.mem_mb,
    }
    if "extract" not in args.skip:
        make_images(images, args.n_images)
        shutil.rmtree(images / "out", ignore_errors=True)
        batched = measure(me + ["--mode", "batched", *common])
        loop = measure(me + ["--mode", "loop", *common])
        import xarray as xr

        ds = xr.open_zarr(images / "out" / "resnet.zarr")
        result["extract"] = {
            "n_images": args.n_images,
            "image_px": 425,
            "network_px": 224,
            "batched": batched.as_dict(),
            "loop": loop.as_dict(),
            "batched_images_per_s": args.n_images / batched.wall_s,
            "loop_images_per_s": args.n_images / loop.wall_s,
            "speedup": loop.wall_s / batched.wall_s,
            "fp16_relative_error_avgpool": ds.attrs["layer_info"]["avgpool"]["fp16_relative_error"],
            "target_speedup": 3.0,
        }
        print(json.dumps(result["extract"], indent=2))
    if "pca" not in args.skip:
        t0 = time.perf_counter()
        make_layer(layer, args.pca_rows, args.pca_features)
        gen_s = time.perf_counter() - t0
        pca = measure(me + ["--mode", "pca", *common, "--n-components", str(args.n_components)])
        details = json.loads((args.work / "pca_result.json").read_text())
        result["pca"] = {
            "shape": [args.pca_rows, args.pca_features],
            "dtype": "float16",
            "gigabytes": args.pca_rows * args.pca_features * 2 / 1e9,
            "generate_s": gen_s,
            "n_components": args.n_components,
            "whole_process": pca.as_dict(),
            "within_mem_mb": pca.peak_tree_rss_mb <= args.mem_mb,
            **details,
        }
        print(json.dumps(result["pca"], indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.skip and args.out.is_file():  # keep the part that was skipped from the last run
        kept = json.loads(args.out.read_text())
        result = {**kept, **result, "commands": [*kept.get("commands", []), result["command"]]}
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
