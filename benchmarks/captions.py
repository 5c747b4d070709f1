"""Brain captioning at NSD scale: the caption decoder's training, captioning and scoring.

NSD-shaped inputs: 9,000 training images with a 512-d embedding (CLIP ViT-B/32's width)
and one caption each, 1,000 test images (the shared1000). Each stage runs in its own
process (whole-process wall time and peak RSS, :mod:`measure`):

- ``train_tiny``: the default caption decoder (a small GPT-2 trained from scratch,
  ``generate.captions`` defaults: 400 AdamW steps of 32) on the 9,000 pairs;
- ``train_gpt2``: ``steps_gpt2`` training steps of the same prefix decoder around a GPT-2
  of GPT-2 small's size (transformers' default ``GPT2Config``, 124 M parameters, random
  weights: the compute of the pretrained one without a download); the full cost is the
  per-step time times the steps a run takes (ClipCap: 10 epochs; here 9,000 / 32 steps per
  epoch), given in the results as ``per_step_s`` and ``epoch_s``;
- ``caption_gpt2``: greedy captions of the 1,000 test embeddings with that GPT-2
  (random weights never stop early: every caption runs to ``max_new_tokens``, an upper
  bound);
- ``score``: METEOR + CIDEr (pycocoevalcap) of 1,000 captions and the shuffled baseline
  (``n_shuffles`` derangements), as the ``caption_scores`` job runs them.

    python benchmarks/captions.py                      # NSD-like sizes
    python benchmarks/captions.py --train 2000 --test 200 --out /tmp/captions_quick.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from measure import measure  # noqa: E402

STAGES = ("train_tiny", "train_gpt2", "caption_gpt2", "score")


def _data(n: int, dim: int, seed: int):
    import numpy as np

    from brainpipe.datasets.synthetic_stimuli import make_stimulus

    captions = [make_stimulus(seed, i + 1, 16, True)[2] for i in range(n)]
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, dim)).astype(np.float32), captions


def _gpt2(tokenizer):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # GPT-2 small's layers and width; the vocabulary is the captions' (the real one is
    # 50,257 tokens: a larger output layer, measured in `lm_head_share` below)
    return GPT2LMHeadModel(cfg)


def child(args: argparse.Namespace) -> None:
    import torch

    from brainpipe.generate.captioner import (
        Captioner,
        fit_captioner,
        mapping_network,
        word_tokenizer,
    )

    torch.set_num_threads(args.threads)
    extra: dict = {}
    t0 = time.perf_counter()
    if args.stage == "train_tiny":
        emb, caps = _data(args.train, args.dim, 0)
        t0 = time.perf_counter()
        _, loss = fit_captioner(emb, caps, steps=args.steps)
        extra = {"steps": args.steps, "final_loss": loss}
    elif args.stage == "train_gpt2":
        emb, caps = _data(args.train, args.dim, 0)
        tok = word_tokenizer(caps)
        lm = _gpt2(tok)
        t0 = time.perf_counter()
        fit_captioner(emb, caps, lm=lm, tokenizer=tok, steps=args.steps_gpt2)
        stage = time.perf_counter() - t0
        per_step = stage / args.steps_gpt2
        extra = {
            "steps": args.steps_gpt2,
            "parameters_m": sum(p.numel() for p in lm.parameters()) / 1e6,
            "per_step_s": per_step,
            "epoch_s": per_step * args.train / 32,
            "clipcap_10_epochs_h": per_step * args.train / 32 * 10 / 3600,
        }
    elif args.stage == "caption_gpt2":
        emb, caps = _data(args.test, args.dim, 1)
        t0 = time.perf_counter()
        tok = word_tokenizer(caps)
        lm = _gpt2(tok)
        mean, sd = emb.mean(0), emb.std(0)
        cap = Captioner(mapping_network(args.dim, 4, lm.config.n_embd), lm, tok, 4, mean, sd)
        t0 = time.perf_counter()
        out = cap.caption(emb, max_new_tokens=args.max_new_tokens)
        extra = {"captions": len(out), "max_new_tokens": args.max_new_tokens}
    else:
        from brainpipe.generate.caption_metrics import CaptionScorer, caption_scores

        _, caps = _data(args.test, 2, 1)
        _, other = _data(args.test, 2, 2)
        t0 = time.perf_counter()
        with CaptionScorer() as scorer:
            extra = caption_scores(scorer, other, caps, n_shuffles=args.n_shuffles)
        extra["n_shuffles"] = args.n_shuffles
    print(json.dumps({"stage_s": time.perf_counter() - t0, **extra}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", type=int, default=9000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--steps-gpt2", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--n-shuffles", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stage", choices=STAGES)
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "captions.json")
    args = parser.parse_args()
    if args.stage:
        child(args)
        return
    import subprocess

    keys = ("train", "test", "dim", "steps", "steps_gpt2", "max_new_tokens", "n_shuffles",
            "threads")  # fmt: skip
    results = {"params": {k: getattr(args, k) for k in keys}}
    for stage in args.stages.split(","):
        cmd = [sys.executable, __file__, "--stage", stage]
        for key in keys:
            cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
        log = args.out.with_suffix(f".{stage}.log")
        with open(log, "w") as fh:
            m = measure(cmd, stdout=fh, stderr=subprocess.STDOUT)
        lines = [ln for ln in log.read_text().splitlines() if ln.startswith("{")]
        if lines:
            log.unlink()
        results[stage] = {**m.as_dict(), **(json.loads(lines[-1]) if lines else {})}
        print(stage, results[stage], flush=True)
        if m.returncode != 0:  # no figures from a failed child: stop before writing any
            sys.exit(f"{stage} failed (exit {m.returncode}); run it alone with --stage {stage}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))  # after each stage


if __name__ == "__main__":
    main()
