"""Generation from decoded latents through the workflow, against the synthetic world's truth.

The synthetic world's V1/V4 responses are driven by a layer of a seeded random AlexNet
(`synthetic.response_network`), so what the brain carries about each image is known. The
real Snakemake run fits diffusers' AutoencoderKL on the training stimuli, decodes its
latents from the betas and generates the test images; they must be identified among the
other test images (two-way, pixel space and AlexNet(5) space) above chance 0.5, and
correlate more with their own stimulus than with the others.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from brainpipe.generate.metrics import reconstruction_metrics, two_way_identification
from brainpipe.report.page import ReportInputs, generation_figures
from brainpipe.storage import open_zarr

from .conftest import ROOT, run_workflow


def generate_config() -> dict:
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config.update(subjects=["01"], sessions=["01", "02"], runs=["01", "02", "03"])
    config["betas"]["method"] = "lsa"
    config["splits"] = {"shared_train_fraction": 0.0}
    config["synthetic"].update(
        seed=5,
        n_subjects=1,
        n_sessions=2,
        n_runs=3,
        trials_per_run=30,
        voxel_size_mm=8.0,
        n_shared=24,
        response_network="alexnet",
        response_layer="features.5",
    )
    config["generate"] = {
        "rois": ["all"],
        "steps": 120,
        "networks": [
            {"network": "alexnet", "layer": "features.5", "seed": 5},
            {"network": "inceptionv3", "layer": "avgpool", "seed": 5},
            {"network": "clipvitb32", "layer": "embedding", "seed": 5},
        ],
        "diffusion": {
            "embedding": {"network": "clipvitb32", "layer": "embedding", "seed": 5},
            "fit_steps": 150,
            "strength": 0.5,
            "steps": 10,
        },
    }
    return config


@pytest.mark.integration
def test_generated_images_are_identified_far_above_chance(tmp_path):
    """Measured (1 subject, 108 training trials, 72 voxels, 24 test stimuli, 16 px): two-way
    identification 0.752 in pixel space and 0.620 in AlexNet(5) space (chance 0.5);
    PixCorr 0.191 with the own stimulus against 0.002 with the others; SSIM 0.256.
    Diffusion stage (random CLIP ViT-B/32 embedding, tiny UNet fitted 150 steps, strength
    0.5): decoded embeddings two-way 0.641; generated images two-way 0.614 pixel, 0.612
    AlexNet(5), 0.514 Inception, 0.585 CLIP; PixCorr 0.145 against 0.045; SSIM 0.235."""
    result = run_workflow(tmp_path, generate_config(), "results/synthetic/generate/metrics.tsv")
    assert result.returncode == 0, result.stderr[-4000:]
    out = tmp_path / "results" / "synthetic" / "generate"
    table = pd.read_csv(out / "metrics.tsv", sep="\t", dtype={"subject": str})
    (row,) = table.to_dict("records")
    assert row["n_test"] >= 20, row
    assert row["two_way_pixel"] >= 0.65, row
    assert row["two_way_alexnet_features.5"] >= 0.55, row
    assert row["pixcorr"] >= row["pixcorr_other"] + 0.1, row
    # the diffusion stage: decoded CLIP embeddings are identified among the test stimuli's
    # (chance 0.5), and the images generated from them (started from stage 1's latents at
    # strength 0.5) still are, in pixels; every paper metric is there for both stages
    assert row["embedding_two_way"] >= 0.58, row
    assert row["diffusion_two_way_pixel"] >= 0.56, row
    assert row["diffusion_pixcorr"] >= row["diffusion_pixcorr_other"] + 0.05, row
    for prefix in ("", "diffusion_"):
        for net in ("alexnet_features.5", "inceptionv3_avgpool", "clipvitb32_embedding"):
            assert 0.0 <= row[f"{prefix}two_way_{net}"] <= 1.0, row
    store = open_zarr(out / "sub-01" / "all" / "reconstructions.zarr")
    images = store["image"].values
    assert images.dtype == np.uint8 and images.shape[1:] == (16, 16, 3)
    assert store["diffusion_image"].values.shape == images.shape
    assert store["embedding"].values.shape == (len(images), 1, 512)
    assert (out / "diffusion" / "unet" / "config.json").is_file()
    # the generator never saw a test image: it was fitted on the training split only
    latents = open_zarr(out / "latents.zarr")
    test = set(latents["stimulus"].values[latents["split"].values == "test"])
    assert set(store["stimulus"].values) <= test
    # the report draws the stimuli above the generated images, with the metrics
    (figure,) = generation_figures(
        ReportInputs(reconstructions=[out / "sub-01" / "all" / "reconstructions.zarr"])
    )
    assert figure.png.startswith(b"\x89PNG") and "two-way pixel" in figure.caption


def test_metrics_chance_and_perfect_cases():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    perfect = reconstruction_metrics(true, true)
    assert perfect["two_way_pixel"] == 1.0 and perfect["pixcorr"] == pytest.approx(1.0)
    assert perfect["ssim"] == pytest.approx(1.0)
    noise = rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    assert abs(reconstruction_metrics(noise, true)["two_way_pixel"] - 0.5) < 0.2
    feats = rng.standard_normal((30, 5))
    assert two_way_identification(feats[::-1], feats) < 0.6


def test_diffusion_pipeline_from_config_classes_is_seeded_and_starts_from_the_init():
    """The second stage's real code path with tiny random-initialised components: diffusers'
    StableDiffusionImg2ImgPipeline over a UNet2DConditionModel, DDIMScheduler and the first
    stage's AutoencoderKL, conditioned on (n, tokens, channels) embeddings."""
    from brainpipe.generate import autoencoder as ae
    from brainpipe.generate import diffusion as df

    rng = np.random.default_rng(0)
    vae = ae.build_autoencoder(16, seed=1)
    unet = df.build_unet(8, 12, seed=1)
    pipe = df.make_pipeline(vae, unet, df.build_scheduler())
    embeds = rng.standard_normal((3, 1, 12)).astype(np.float32)
    init = rng.standard_normal((3, 4 * 8 * 8)).astype(np.float32)
    kw = dict(steps=4, guidance=2.0, seed=3)
    first = df.generate(pipe, embeds, init.reshape(3, 4, 8, 8), strength=0.5, **kw)
    assert first.dtype == np.uint8 and first.shape == (3, 16, 16, 3)
    again = df.generate(pipe, embeds, init.reshape(3, 4, 8, 8), strength=0.5, **kw)
    assert np.array_equal(first, again)
    other = df.generate(pipe, embeds[::-1].copy(), init.reshape(3, 4, 8, 8), strength=0.5, **kw)
    assert not np.array_equal(first, other)  # the embeddings condition the UNet
    noise = df.generate(pipe, embeds, None, **kw)  # from pure noise
    assert noise.shape == first.shape
    # a fitting step runs (the denoising objective on training latents) and changes weights
    before = [p.detach().clone() for p in unet.parameters()]
    df.fit_unet(unet, df.build_scheduler(), init.reshape(3, 4, 8, 8), embeds, steps=2)
    after = list(unet.parameters())
    assert any(not np.allclose(b, a.detach()) for b, a in zip(before, after, strict=True))


def test_generation_weights_are_requests_of_the_weights_rule(tmp_path):
    """Hub-repo weights and pretrained metric networks become manifests the `weights` rule
    fetches into the shared cache; a missing file stops the run naming it."""
    from brainpipe.errors import BrainpipeInputError
    from brainpipe.generate.jobs import generate_params
    from brainpipe.generate.weights import check_present, requests

    config = {
        "generate": {
            "rois": ["all"],
            "weights": "stabilityai/sd-vae-ft-mse",
            "networks": [{"network": "inceptionv3", "layer": "avgpool", "weights": "pretrained"}],
            "diffusion": {
                "weights": "lambdalabs/sd-image-variations-diffusers",
                "embedding": {"network": "clipvitl14", "weights": "pretrained"},
            },
        }
    }
    features = {"weights_dir": str(tmp_path)}
    p = generate_params(config)
    req = requests(p, features)
    assert set(req) == {
        "generatevae",
        "generateunet",
        "generatenetinceptionv3",
        "generatenetclipvitl14",
    }
    unet_files = [str(f.path) for f in req["generateunet"][1]]
    assert any(f.endswith("unet/diffusion_pytorch_model.safetensors") for f in unet_files)
    assert all(f.startswith(str(tmp_path)) for f in unet_files)
    with pytest.raises(BrainpipeInputError, match="snakemake --cores 1 weights"):
        check_present(p, features)
    # a local folder is used as is: nothing to fetch
    (tmp_path / "vae").mkdir()
    config["generate"]["weights"] = str(tmp_path / "vae")
    assert "generatevae" not in requests(generate_params(config), features)


def test_generation_weights_go_through_the_weights_rule(tmp_path):
    """Dry runs: with hub weights configured and the cache empty, the generation DAG stops
    before any job naming the missing file and the fetch command, while `snakemake weights`
    plans the fetch of the generation stage's files (manifest `weights/generateunet.json`)."""
    config = generate_config()
    config["generate"]["diffusion"]["weights"] = "lambdalabs/sd-image-variations-diffusers"
    config["features"]["weights_dir"] = str(tmp_path / "cache")
    result = run_workflow(tmp_path, config, "-n", "results/synthetic/generate/metrics.tsv")
    assert result.returncode != 0
    assert "unet/config.json" in result.stdout + result.stderr
    assert "snakemake --cores 1 weights" in result.stdout + result.stderr
    result = run_workflow(tmp_path, config, "-n", "weights")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "results/weights/generateunet.json" in result.stdout
