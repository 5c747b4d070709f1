"""Cost of the second generation stage at a real-size config, on the CPU, projected to NSD.

Builds Stable Diffusion 1.x's UNet (``UNet2DConditionModel``: 320/640/1280/1280 channels,
2 layers per block, cross-attention width 768 = CLIP ViT-L/14's image embedding, the
architecture of Stable Diffusion image variations) and its ``AutoencoderKL`` (512 px,
latents 4 x 64 x 64) from diffusers' own config classes with random weights (pretrained
weights change values, not cost), and generates ``--n`` images with
:func:`brainpipe.generate.diffusion.generate` the way a ``generate`` job does: a decoded
embedding per image, started from first-stage latents at ``--strength``, DDIM,
classifier-free guidance (two UNet evaluations per step). The child process is measured
whole (wall time, peak RSS: ``benchmarks/measure.py``); inside it, the reference is the
bare work the pipeline cannot avoid, measured in the same run: one UNet forward on the
guidance batch times the steps run, plus one VAE decode. The ratio is pipeline / bare.

Projection: per image at Brain-Diffuser's setting (50 DDIM steps at strength 0.75: 37
steps run) from the measured per-step and decode times, times NSD's 1,000 test images x 8
subjects. It is a CPU figure on this machine (no GPU was lent); the GPU figure is still
to be measured.

    python benchmarks/generate.py                    # 1 image, 4 steps at strength 0.5
    python benchmarks/generate.py --n 2 --steps 8    # more images / steps
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

SD_UNET = {
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
SD_VAE = {
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "mid_block_add_attention": True,
}
NSD_IMAGES = 1000 * 8
BRAIN_DIFFUSER_STEPS = 37  # 50 DDIM steps at strength 0.75


def child(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from brainpipe.generate import autoencoder as ae
    from brainpipe.generate import diffusion as df

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    vae = ae.build_autoencoder(args.size, seed=0, config=SD_VAE).eval()
    side = args.size // 8
    unet = df.build_unet(side, 768, seed=0, config=SD_UNET).eval()
    pipe = df.make_pipeline(vae, unet, df.build_scheduler())
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    embeds = rng.standard_normal((args.n, 1, 768)).astype(np.float32)
    init = rng.standard_normal((args.n, 4, side, side)).astype(np.float32)
    n_run = min(int(args.steps * args.strength), args.steps)
    t0 = time.perf_counter()
    images = df.generate(
        pipe, embeds, init, strength=args.strength, steps=args.steps, guidance=3.0, batch_size=1
    )
    pipeline_s = time.perf_counter() - t0
    # the bare work, same process: one UNet forward on the guidance batch, one VAE decode
    with torch.no_grad():
        x = torch.randn(2, 4, side, side)
        c = torch.randn(2, 1, 768)
        t0 = time.perf_counter()
        unet(x, torch.tensor(500), encoder_hidden_states=c)
        unet_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        vae.decode(torch.randn(1, 4, side, side))
        decode_s = time.perf_counter() - t0
    bare_s = args.n * (n_run * unet_s + decode_s)
    per_image = pipeline_s / args.n
    per_step = max(per_image - decode_s, 0.0) / max(n_run, 1)
    projected = BRAIN_DIFFUSER_STEPS * per_step + decode_s
    return {
        "images": list(images.shape),
        "unet_params_m": round(sum(p.numel() for p in unet.parameters()) / 1e6, 1),
        "vae_params_m": round(sum(p.numel() for p in vae.parameters()) / 1e6, 1),
        "build_s": round(build_s, 2),
        "steps_run_per_image": n_run,
        "pipeline_s": round(pipeline_s, 2),
        "pipeline_s_per_image": round(per_image, 2),
        "bare_unet_forward_s": round(unet_s, 2),
        "bare_vae_decode_s": round(decode_s, 2),
        "ratio_pipeline_vs_bare": round(pipeline_s / bare_s, 3),
        "projected_s_per_image_37_steps": round(projected, 1),
        "projected_cpu_hours_nsd_8000_images": round(projected * NSD_IMAGES / 3600, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1, help="images generated")
    ap.add_argument("--size", type=int, default=512, help="image size (px)")
    ap.add_argument("--steps", type=int, default=4, help="DDIM steps of the full schedule")
    ap.add_argument("--strength", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results" / "generate.json"))
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:  # the measured process: writes its inner timings to the given file
        Path(args.child).write_text(json.dumps(child(args)))
        return
    import os
    import platform
    import tempfile

    sys.path.insert(0, str(HERE))
    from measure import measure

    with tempfile.TemporaryDirectory() as tmp:
        inner_path = Path(tmp) / "inner.json"
        cmd = [sys.executable, __file__, *sys.argv[1:], "--child", str(inner_path)]
        m = measure(cmd)
        if m.returncode != 0:
            raise SystemExit(f"benchmark child failed with exit status {m.returncode}")
        inner = json.loads(inner_path.read_text())
    result = {
        "what": "second generation stage (diffusion from decoded CLIP embeddings), CPU",
        "config": {k: v for k, v in vars(args).items() if k not in ("child", "out")},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (CPU only, no GPU lent)",
        "process_wall_s": round(m.wall_s, 2),
        "process_wall_s_per_image": round(m.wall_s / args.n, 2),
        "peak_rss_mb": round(m.peak_tree_rss_mb, 1),
        **inner,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
