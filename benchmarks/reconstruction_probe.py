"""Probe (issue 19, generation; NOT wired into the workflow): can the synthetic image world's
brain responses drive an image generator?

Fits diffusers' AutoencoderKL (brainpipe.generate.autoencoder.TINY_CONFIG) on the training
stimuli of a synthetic dataset at ``size`` px, ridge-decodes its latents from the ground-truth
responses of ROI voxels (sub-01, 25 random test stimuli held out of everything fitted),
decodes the predicted latents into images, and prints PixCorr / SSIM / two-way pixel
identification for the brain reconstructions, the autoencoder's own reconstructions of the
test images (upper bound) and shuffled reconstructions (chance).

    python benchmarks/reconstruction_probe.py /tmp/syn 16 150 amplitude
    python benchmarks/reconstruction_probe.py /tmp/syn 16 150 stimulus_response   # noise-free
"""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from brainpipe.datasets import synthetic
from brainpipe.generate.autoencoder import decode, encode, fit_autoencoder, resize_images
from brainpipe.generate.metrics import reconstruction_metrics
from brainpipe.ridge import fit_ridge, solve_ridge_cv

torch.set_num_threads(1)
root = Path(sys.argv[1]) / "synthetic"
size, steps, variable = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
network = sys.argv[5] if len(sys.argv) > 5 else ""  # e.g. alexnet:features.5
if not root.exists():
    synthetic.generate(
        root,
        synthetic.SyntheticParams.from_config(
            {"seed": 5, "n_subjects": 1, "n_sessions": 2, "n_runs": 3, "trials_per_run": 30,
             "voxel_size_mm": 8.0, "n_shared": 10,
             **({"response_network": network.split(":")[0], "response_layer": network.split(":")[1]}
                if network else {})}
        ),
    )  # fmt: skip
gt = synthetic.load_ground_truth(root, "01")
table = pd.read_csv(root / "stimuli" / "stimuli.tsv", sep="\t")
images = {
    s: np.asarray(Image.open(root / "stimuli" / p))
    for s, p in zip(table.stimulus, table.image, strict=True)
}
stim = np.asarray(gt.stimulus.values, dtype=object).astype(str)
in_roi = np.asarray(gt.roi.values, dtype=object).astype(str) != "none"
responses = gt[variable].values[:, in_roi]
unique = sorted(set(stim))
test = set(np.random.default_rng(0).choice(unique, 25, replace=False))
train = np.array([s not in test for s in stim])
vae, loss = fit_autoencoder(
    resize_images([images[s] for s in sorted(set(stim[train]))], size), steps=steps
)
latents = dict(
    zip(unique, encode(vae, resize_images([images[s] for s in unique], size)), strict=True)
)
X, Y = responses[train], np.stack([latents[s] for s in stim[train]])
mu, sd = X.mean(0), X.std(0) + 1e-6
alphas = [1, 10, 100, 1e3, 1e4, 1e5]
folds = [
    (np.flatnonzero(np.arange(len(X)) % 5 != k), np.flatnonzero(np.arange(len(X)) % 5 == k))
    for k in range(5)
]
_, cv = solve_ridge_cv((X - mu) / sd, Y, alphas, folds)
W, b = fit_ridge((X - mu) / sd, Y, alphas[int(np.argmax(cv.mean(1)))])
order = sorted(test)
predicted = ((np.stack([responses[stim == s].mean(0) for s in order]) - mu) / sd) @ W + b
recon = decode(vae, predicted.astype(np.float32), size)
truth = resize_images([images[s] for s in order], size)
print("brain", reconstruction_metrics(recon, truth))
print(
    "autoencoder",
    reconstruction_metrics(decode(vae, np.stack([latents[s] for s in order]), size), truth),
)
perm = np.random.default_rng(1).permutation(len(recon))
print("shuffled", reconstruction_metrics(recon[perm], truth))
if network:  # two-way identification in the network layer that drives the world's V1/V4
    from brainpipe.features.extract import layer_activations
    from brainpipe.generate.metrics import two_way_identification

    net, layer = network.split(":")
    big = lambda ims: resize_images(ims, 64)  # noqa: E731
    true_f = layer_activations(net, layer, np.stack([images[s] for s in order]), seed=5)
    for name, ims in [("brain", recon), ("shuffled", recon[perm])]:
        f = layer_activations(net, layer, big(ims), seed=5)
        print(name, "two-way", network, two_way_identification(f, true_f))
