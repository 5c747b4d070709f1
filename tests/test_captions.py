"""Brain captioning through the workflow, against the synthetic world's captions.

The synthetic world's captions name each shape's size, colour and category
(:mod:`brainpipe.datasets.synthetic_stimuli`); V4 carries colour and LOC category, so a
caption embedding decoded from the betas carries most of what a caption says. The real
Snakemake run trains the caption decoder (a small GPT-2 built from transformers'
``GPT2Config``, prefix-conditioned as ClipCap) on the TRAINING stimuli's captions, decodes
the caption embedding of each test stimulus from the betas (``ridgedecoder``) and captions
it; METEOR and CIDEr (pycocoevalcap) must beat the shuffled-reference baseline.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from brainpipe.errors import BrainpipeInputError
from brainpipe.generate.caption_jobs import check_caption_config
from brainpipe.generate.caption_metrics import CaptionScorer, caption_scores, derangements
from brainpipe.generate.captioner import Captioner, fit_captioner, word_tokenizer

from .conftest import ROOT, run_workflow


def caption_config() -> dict:
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config.update(
        subjects=["01"],
        sessions=["01", "02"],
        runs=["01", "02", "03"],
        feature_models=["caption"],
        models=["ridgedecoder"],
    )
    config["betas"]["method"] = "lsa"
    config["splits"] = {"shared_train_fraction": 0.0}
    config["synthetic"].update(
        seed=3, n_subjects=1, n_sessions=2, n_runs=3, trials_per_run=40, voxel_size_mm=8.0
    )
    config["generate"] = {"captions": {"rois": ["all"], "steps": 400}}
    return config


@pytest.mark.integration
def test_captions_of_decoded_embeddings_beat_the_shuffled_baseline(tmp_path):
    """Measured (seed 3, 1 subject, 8 mm, 24 test stimuli): see the figures in
    docs/captions.md; the asserts keep a margin below them."""
    target = "results/synthetic/generate/captions/scores.tsv"
    result = run_workflow(tmp_path, caption_config(), target)
    assert result.returncode == 0, result.stderr[-4000:]
    out = tmp_path / "results" / "synthetic" / "generate" / "captions"
    (row,) = pd.read_csv(out / "scores.tsv", sep="\t", dtype={"subject": str}).to_dict("records")
    assert row["n_test"] >= 20, row
    assert row["meteor"] >= row["meteor_shuffled"] + 0.05, row
    assert row["cider"] >= 1.5 * row["cider_shuffled"], row
    # the ceiling: the caption decoder reads true embeddings better than decoded ones
    assert row["meteor_true_embedding"] >= row["meteor"] - 0.02, row
    captions = pd.read_csv(out / "sub-01" / "all" / "captions.tsv", sep="\t", dtype=str)
    assert captions["caption"].str.len().min() > 0
    # only test stimuli are captioned; the caption decoder never saw a test caption
    splits = pd.read_csv(tmp_path / "results" / "synthetic" / "splits.tsv", sep="\t", dtype=str)
    test = set(splits.loc[splits["split"] == "test", "stimulus"])
    assert set(captions["stimulus"]) <= test
    vocab = set(Captioner.load(out / "captioner").tokenizer.get_vocab())
    train_words = {
        w
        for c in pd.read_csv(
            tmp_path / "data" / "synthetic" / "stimuli" / "stimuli.tsv", sep="\t", dtype=str
        )
        .set_index("stimulus")
        .loc[sorted(set(splits.loc[splits["split"] == "train", "stimulus"]))]["caption"]
        for w in word_tokenizer([c]).get_vocab()
    }
    assert vocab <= train_words


def test_caption_decoder_reads_embeddings_and_is_saved_and_loaded(tmp_path):
    """A one-hot 'embedding' of each caption's colour and category: after training, the
    decoder names them for embeddings it never saw in that combination."""
    colours, shapes = ["red", "blue", "green"], ["star", "ring", "cross", "circle"]
    pairs = [(c, s) for c in colours for s in shapes]
    test = {("green", "cross"), ("red", "circle")}
    train = [p for p in pairs if p not in test]

    def emb(items):
        return np.array(
            [np.r_[np.eye(3)[colours.index(c)], np.eye(4)[shapes.index(s)]] for c, s in items],
            np.float32,
        )

    torch.set_num_threads(1)  # tiny model: more threads only contend on a shared machine
    cap, loss = fit_captioner(
        emb(train), [f"a {c} {s}" for c, s in train], steps=250, noise_sd=0.1, seed=1
    )
    assert loss < 0.5
    cap.save(tmp_path / "captioner")
    again = Captioner.load(tmp_path / "captioner")
    out = again.caption(emb(sorted(test)))
    assert out == cap.caption(emb(sorted(test)))
    assert out == [f"a {c} {s}" for c, s in sorted(test)], out


def test_metrics_perfect_shuffled_and_derangements():
    refs = [
        "a large red star",
        "a small blue ring on a grey background",
        "a green cross, medium in size",
        "a small yellow circle",
    ]
    with CaptionScorer() as scorer:
        same = caption_scores(scorer, refs, refs, n_shuffles=5)
        assert same["meteor"] > 0.9 and same["cider"] > same["cider_shuffled"] + 1
        assert same["meteor_shuffled"] < same["meteor"] - 0.3
        empty = caption_scores(scorer, ["", "", "", ""], refs, n_shuffles=1)
        assert empty["meteor"] < 0.1 and empty["cider"] < 0.1
    for perm in derangements(5, 20, seed=2):
        assert not np.any(perm == np.arange(5)) and sorted(perm) == list(range(5))
    with pytest.raises(BrainpipeInputError, match="generate.captions.metrics"):
        CaptionScorer(["bleu"])


def test_config_checks_name_the_key():
    config = caption_config()
    check_caption_config(config)
    config["generate"]["captions"]["decoder"] = "ridge"
    with pytest.raises(BrainpipeInputError, match="generate.captions.decoder"):
        check_caption_config(config)
    config["generate"]["captions"].update(decoder="ridgedecoder", features="gabor")
    with pytest.raises(BrainpipeInputError, match="generate.captions.features"):
        check_caption_config(config)
    config["generate"]["captions"].update(features="caption", language_model="gpt")
    with pytest.raises(BrainpipeInputError, match="not a features.networks label"):
        check_caption_config(config)
    config["features"]["networks"] = {"gpt": {"network": "bert"}}
    with pytest.raises(BrainpipeInputError, match="not a causal language model"):
        check_caption_config(config)


def _byte_level_vocab() -> dict[str, int]:
    """GPT-2's byte-level alphabet (every byte one token, as in its vocab.json) + end-of-text."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = sorted(bytes_to_unicode().values())
    return {**{c: i for i, c in enumerate(chars)}, "<|endoftext|>": len(chars)}


def test_pretrained_gpt2_is_read_from_the_hub_cache(tmp_path):
    """The real-run path: `language_model` names a `features.networks` label of network
    gpt2; the caption decoder loads it and its tokenizer from the hub cache, offline (a
    small GPT-2 with GPT-2's file layout: config.json, vocab.json, merges.txt)."""
    import json

    import transformers

    from brainpipe.features.networks import get_network, hf_cache_dir
    from brainpipe.generate.caption_jobs import language_model_source
    from brainpipe.generate.captioner import pretrained_language_model

    from .test_features_networks import _safetensors_bytes, put_in_hub_cache

    vocab = _byte_level_vocab()
    cfg = transformers.GPT2Config(
        vocab_size=len(vocab), n_embd=32, n_layer=2, n_head=2, n_positions=64,
        bos_token_id=len(vocab) - 1, eos_token_id=len(vocab) - 1,
    )  # fmt: skip
    torch.manual_seed(0)
    lm = transformers.GPT2LMHeadModel(cfg)
    state = {k: v for k, v in lm.state_dict().items() if k != "lm_head.weight"}  # tied
    put_in_hub_cache(
        hf_cache_dir(tmp_path),
        "openai-community/gpt2",
        {
            "config.json": cfg.to_json_string().encode(),
            "generation_config.json": b"{}",
            "tokenizer_config.json": json.dumps({"model_max_length": 64}).encode(),
            "vocab.json": json.dumps(vocab).encode(),
            "merges.txt": b"#version: 0.2\n",
            "model.safetensors": _safetensors_bytes(state),
        },
    )
    config = caption_config()
    config["features"] = {"weights_dir": str(tmp_path), "networks": {"lm": {"network": "gpt2"}}}
    config["generate"]["captions"]["language_model"] = "lm"
    check_caption_config(config)
    repo, cache = language_model_source(config)
    model, tokenizer = pretrained_language_model(repo, cache)
    key = "transformer.h.1.mlp.c_fc.weight"
    assert torch.equal(model.state_dict()[key], lm.state_dict()[key])
    assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>"
    torch.set_num_threads(1)
    emb = np.eye(4, dtype=np.float32)
    captions = ["a red star", "a blue ring", "a green cross", "a red ring"]
    cap, loss = fit_captioner(emb, captions, lm=model, tokenizer=tokenizer, steps=150, seed=2)
    cap.save(tmp_path / "captioner")
    again = Captioner.load(tmp_path / "captioner")
    assert again.caption(emb, max_new_tokens=16) == cap.caption(emb, max_new_tokens=16)
    assert cap.caption(emb[:1], max_new_tokens=16) == ["a red star"], loss
    # the same files serve the gpt2 feature network (hidden states, padded with end-of-text)
    net = get_network("gpt2").builder(True, tmp_path, 0)
    outs = net.forward(net.collate(["a red star", "a ring"]), ["hidden2"], "cpu")
    assert outs["hidden2"].shape[0] == 2 and outs["hidden2"].shape[2] == 32
