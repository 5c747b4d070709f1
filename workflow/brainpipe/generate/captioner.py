"""The caption decoder behind brain captioning: a prefix language model (ClipCap-style).

ClipCap (Mokady, Hertz & Bermano 2021, "ClipCap: CLIP Prefix for Image Captioning") maps a
CLIP embedding through an MLP to a *prefix* of ``prefix_length`` vectors in a GPT-2's
token-embedding space and lets GPT-2 continue it with the caption; brain-captioning work
(BrainCap, Ferrante et al. 2023; MindEye2's captions, Scotti et al. 2024) regresses brain
responses onto the embedding such a decoder reads and captions the *predicted* embedding.

Here the language model is transformers' ``GPT2LMHeadModel``:

- in real runs a pretrained GPT-2 read from the local weight cache (the registered
  ``gpt2`` network, fetched and checked once by the ``weights`` rule), with its tokenizer;
- with no language model configured (tests, the synthetic world), a small GPT-2 built from
  transformers' own ``GPT2Config`` with a word-level tokenizer (the ``tokenizers``
  library's ``WordLevel`` model) whose vocabulary comes from the TRAINING captions only.

The mapping network (ClipCap's MLP: ``Linear(d, k n / 2) - Tanh - Linear(k n / 2, k n)``)
and the language model are trained together with the language model's own next-token
cross-entropy on (embedding, caption) pairs of the training stimuli; Gaussian noise is
added to the embeddings while training (CapDec's noise injection, Nukrai et al. 2022), so
the decoder tolerates the error of an embedding predicted from the brain. Captions are
produced by the library's ``generate`` from the prefix (``inputs_embeds``), greedy or beam.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: A small GPT-2 (transformers' own ``GPT2Config`` keys), used when no language model is set.
TINY_GPT2: dict[str, Any] = {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 64}

#: Special tokens of the word-level tokenizer.
PAD, UNK, EOS = "[PAD]", "[UNK]", "[EOS]"

MAPPING_FILE = "mapping.safetensors"
META_FILE = "captioner.json"


def word_tokenizer(train_captions: Sequence[str]):
    """A word-level ``PreTrainedTokenizerFast`` whose vocabulary is the training captions'.

    Lower-cased, split on whitespace and punctuation (``tokenizers``' ``Whitespace``
    pre-tokenizer); words never seen in training map to ``[UNK]``.
    """
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Whitespace()
    words = sorted({w for c in train_captions for w, _ in pre.pre_tokenize_str(str(c).lower())})
    vocab = {tok: i for i, tok in enumerate([PAD, UNK, EOS, *words])}
    tok = Tokenizer(WordLevel(vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, unk_token=UNK, eos_token=EOS
    )


def tiny_language_model(vocab_size: int, eos_token_id: int, pad_token_id: int, seed: int = 0,
                        config: dict[str, Any] | None = None):  # fmt: skip
    """A seeded random-initialised ``GPT2LMHeadModel`` from ``GPT2Config`` (:data:`TINY_GPT2`)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(int(seed))
    cfg = GPT2Config(
        vocab_size=int(vocab_size),
        bos_token_id=int(eos_token_id),
        eos_token_id=int(eos_token_id),
        pad_token_id=int(pad_token_id),
        **{**TINY_GPT2, **(config or {})},
    )
    return GPT2LMHeadModel(cfg)


def pretrained_language_model(repo_id: str, cache_dir: str | Path):
    """A pretrained GPT-2 and its tokenizer from the local hub cache (never downloads)."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from brainpipe.features.networks import hub_offline

    kw = {"cache_dir": str(cache_dir), "local_files_only": True}
    with hub_offline():
        tokenizer = AutoTokenizer.from_pretrained(repo_id, **kw)
        model = GPT2LMHeadModel.from_pretrained(repo_id, **kw)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def mapping_network(embed_dim: int, prefix_length: int, n_embd: int, seed: int = 0):
    """ClipCap's MLP from an embedding to ``prefix_length`` token embeddings."""
    import torch

    torch.manual_seed(int(seed) + 1)
    hidden = max(prefix_length * n_embd // 2, 1)
    return torch.nn.Sequential(
        torch.nn.Linear(int(embed_dim), hidden),
        torch.nn.Tanh(),
        torch.nn.Linear(hidden, int(prefix_length) * int(n_embd)),
    )


class Captioner:
    """Embedding standardiser + mapping network + language model + tokenizer.

    Attributes
    ----------
    mapping : torch.nn.Sequential
    lm : transformers.GPT2LMHeadModel
    tokenizer : transformers.PreTrainedTokenizerFast
    prefix_length : int
    mean, sd : ndarray, shape (embed_dim,)
        Training embeddings' statistics; every embedding is standardised with them.
    """

    def __init__(self, mapping, lm, tokenizer, prefix_length: int, mean, sd) -> None:
        self.mapping, self.lm, self.tokenizer = mapping, lm, tokenizer
        self.prefix_length = int(prefix_length)
        self.mean = np.asarray(mean, np.float32)
        self.sd = np.asarray(sd, np.float32)

    def prefix(self, embeddings: np.ndarray):
        """Prefix embeddings ``(n, prefix_length, n_embd)`` of raw embeddings ``(n, d)``."""
        import torch

        z = (np.asarray(embeddings, np.float32) - self.mean) / self.sd
        out = self.mapping(torch.as_tensor(z, dtype=torch.float32))
        return out.reshape(len(z), self.prefix_length, self.lm.config.n_embd)

    def caption(self, embeddings: np.ndarray, max_new_tokens: int = 20, num_beams: int = 1,
                batch_size: int = 64) -> list[str]:  # fmt: skip
        """Captions of ``embeddings`` (n, d): the language model continues each prefix."""
        import torch

        self.mapping.eval()
        self.lm.eval()
        out: list[str] = []
        eos = self.tokenizer.eos_token_id
        with torch.no_grad():
            for start in range(0, len(embeddings), batch_size):
                prefix = self.prefix(embeddings[start : start + batch_size])
                ids = self.lm.generate(
                    inputs_embeds=prefix,
                    attention_mask=torch.ones(prefix.shape[:2], dtype=torch.long),
                    max_new_tokens=int(max_new_tokens),
                    num_beams=int(num_beams),
                    do_sample=False,
                    eos_token_id=eos,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
                text = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
                out += [" ".join(t.split()) for t in text]
        return out

    def save(self, folder: str | Path) -> Path:
        """The language model and tokenizer in transformers' ``save_pretrained`` layout,
        the mapping network as safetensors, the standardiser in ``captioner.json``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.lm.save_pretrained(str(folder / "lm"), safe_serialization=True)
        self.tokenizer.save_pretrained(str(folder / "lm"))
        save_file(
            {k: v.contiguous() for k, v in self.mapping.state_dict().items()},
            str(folder / MAPPING_FILE),
        )
        meta = {
            "prefix_length": self.prefix_length,
            "embed_dim": int(self.mean.size),
            "mean": self.mean.tolist(),
            "sd": self.sd.tolist(),
        }
        (folder / META_FILE).write_text(json.dumps(meta))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Captioner:
        """A captioner written by :meth:`save` (local files only)."""
        from safetensors.torch import load_file
        from transformers import AutoTokenizer, GPT2LMHeadModel

        folder = Path(folder)
        meta = json.loads((folder / META_FILE).read_text())
        lm = GPT2LMHeadModel.from_pretrained(str(folder / "lm"), local_files_only=True)
        tok = AutoTokenizer.from_pretrained(str(folder / "lm"), local_files_only=True)
        mapping = mapping_network(meta["embed_dim"], meta["prefix_length"], lm.config.n_embd)
        mapping.load_state_dict(load_file(str(folder / MAPPING_FILE)))
        return cls(mapping, lm.eval(), tok, meta["prefix_length"], meta["mean"], meta["sd"])


def fit_captioner(
    embeddings: np.ndarray,
    captions: Sequence[str],
    lm=None,
    tokenizer=None,
    prefix_length: int = 4,
    steps: int = 600,
    batch_size: int = 32,
    lr: float = 3e-3,
    noise_sd: float = 0.3,
    seed: int = 0,
    lm_config: dict[str, Any] | None = None,
) -> tuple[Captioner, float]:
    """Train a prefix captioner on (embedding, caption) pairs of the TRAINING stimuli.

    Parameters
    ----------
    embeddings : ndarray, shape (n, d)
        The stimuli's embeddings (the space the brain decoder predicts).
    captions : sequence of str, length n
    lm, tokenizer : optional
        A pretrained ``GPT2LMHeadModel`` and its tokenizer (:func:`pretrained_language_model`);
        None: :func:`tiny_language_model` with :func:`word_tokenizer` of ``captions``.
    prefix_length : int
        Prefix vectors the mapping network makes.
    steps, batch_size, lr : int, int, float
        AdamW steps on random mini-batches.
    noise_sd : float
        Sd of the Gaussian noise added to the standardised embeddings while training.
    seed : int
    lm_config : dict, optional
        Overrides of :data:`TINY_GPT2`.

    Returns
    -------
    Captioner and the final training loss.
    """
    import torch

    emb = np.asarray(embeddings, np.float32)
    captions = [str(c) for c in captions]
    if len(emb) != len(captions) or len(emb) < 2:
        raise ValueError(f"need >= 2 (embedding, caption) pairs, got {len(emb)}/{len(captions)}")
    if lm is None:
        tokenizer = word_tokenizer(captions)
        lm = tiny_language_model(
            len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id, seed, lm_config
        )
    mean = emb.mean(0)
    sd = emb.std(0)
    sd[sd == 0] = 1.0
    mapping = mapping_network(emb.shape[1], prefix_length, lm.config.n_embd, seed)
    cap = Captioner(mapping, lm, tokenizer, prefix_length, mean, sd)
    enc = tokenizer([c + tokenizer.eos_token for c in captions], add_special_tokens=False)
    lengths = [len(ids) for ids in enc["input_ids"]]
    width = max(lengths)
    ids = np.full((len(captions), width), tokenizer.pad_token_id, np.int64)
    for i, row in enumerate(enc["input_ids"]):
        ids[i, : len(row)] = row
    ids_t = torch.as_tensor(ids)
    real = torch.as_tensor(np.arange(width)[None, :] < np.asarray(lengths)[:, None])
    z = torch.as_tensor((emb - mean) / sd)
    gen = torch.Generator().manual_seed(int(seed))
    params = list(mapping.parameters()) + list(lm.parameters())
    opt = torch.optim.AdamW(params, lr=float(lr), weight_decay=0.01)
    mapping.train()
    lm.train()
    loss = torch.tensor(float("nan"))
    k = int(prefix_length)
    for step in range(int(steps)):
        idx = torch.randint(0, len(z), (min(int(batch_size), len(z)),), generator=gen)
        zb = z[idx] + float(noise_sd) * torch.randn(z[idx].shape, generator=gen)
        prefix = mapping(zb).reshape(len(idx), k, lm.config.n_embd)
        tokens = lm.get_input_embeddings()(ids_t[idx])
        labels = torch.cat(
            [torch.full((len(idx), k), -100), ids_t[idx].masked_fill(~real[idx], -100)], dim=1
        )
        mask = torch.cat([torch.ones(len(idx), k, dtype=torch.bool), real[idx]], dim=1).long()
        out = lm(inputs_embeds=torch.cat([prefix, tokens], dim=1), attention_mask=mask,
                 labels=labels)  # fmt: skip
        loss = out.loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            log.info("captioner step %d: loss %.4f", step, float(loss.detach()))
    mapping.eval()
    lm.eval()
    return cap, float(loss.detach())
