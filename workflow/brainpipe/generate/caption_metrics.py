"""Caption metrics as captioning papers report them: METEOR and CIDEr from pycocoevalcap.

``pycocoevalcap`` is the MS-COCO caption evaluation code (Chen et al. 2015, "Microsoft COCO
Captions: Data Collection and Evaluation Server") that brain-captioning papers score with
(BrainCap, MindEye2, UniBrain): captions are tokenised by its Stanford PTBTokenizer
(lower-cased, punctuation removed), METEOR is the reference METEOR 1.5 jar with its
paraphrase table (Denkowski & Lavie 2014) and CIDEr its pure-Python CIDEr-D scorer
(Vedantam et al. 2015; n-grams 1-4, sigma 6, document frequencies from the references
of the set being scored). Both jars ship inside the package; they need a Java runtime
(``java`` on the PATH), which :func:`check_java` asks for with a clear error.

The baseline a caption must beat is the *shuffled* score: the same generated captions
scored against the references of other test stimuli (random derangements), which keeps
everything but the match between a caption and its own stimulus.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence

import numpy as np

from brainpipe.errors import BrainpipeInputError

#: Metrics :func:`caption_scores` can compute.
CAPTION_METRICS = ("meteor", "cider")


def check_java() -> str:
    """The ``java`` executable METEOR and the PTB tokenizer run on, or a clear error."""
    java = shutil.which("java")
    if java is None:
        raise BrainpipeInputError(
            "java",
            "(executable)",
            "pycocoevalcap's METEOR and PTB tokenizer run on Java; install a Java runtime "
            "(e.g. `apt-get install default-jre-headless`) so `java` is on the PATH",
        )
    return java


def tokenize(captions: Sequence[str]) -> list[str]:
    """pycocoevalcap's PTB tokenisation of each caption (lower-cased, no punctuation)."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    check_java()
    table = {i: [{"caption": str(c) or "."}] for i, c in enumerate(captions)}
    out = PTBTokenizer().tokenize(table)
    return [out[i][0] for i in range(len(captions))]


def derangements(n: int, count: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` random permutations of ``range(n)`` with no fixed point."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < count:
        perm = rng.permutation(n)
        if n < 2 or not np.any(perm == np.arange(n)):
            out.append(perm)
    return out


class CaptionScorer:
    """METEOR / CIDEr of generated captions against references (one METEOR process).

    Use as a context manager: the METEOR jar (a Java process that loads its paraphrase
    table once, ~10 s) is started on entry and stopped on exit.
    """

    def __init__(self, metrics: Sequence[str] = CAPTION_METRICS) -> None:
        bad = [m for m in metrics if m not in CAPTION_METRICS]
        if bad:
            raise BrainpipeInputError(
                "config", "generate.captions.metrics", f"{bad[0]!r} is not one of {CAPTION_METRICS}"
            )
        self.metrics = list(metrics)
        self._meteor = None

    def __enter__(self) -> CaptionScorer:
        if "meteor" in self.metrics:
            from pycocoevalcap.meteor.meteor import Meteor

            check_java()
            self._meteor = Meteor()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._meteor is not None:
            proc = self._meteor.meteor_p
            proc.stdin.close()
            proc.kill()
            proc.wait()
            self._meteor.meteor_p = _Closed()
            self._meteor = None

    def score(self, generated: Sequence[str], references: Sequence[str]) -> dict[str, np.ndarray]:
        """Per-caption scores of PTB-tokenised ``generated`` vs ``references`` (same order)."""
        from pycocoevalcap.cider.cider import Cider

        if len(generated) != len(references):
            raise ValueError(f"{len(generated)} captions for {len(references)} references")
        gts = {i: [r] for i, r in enumerate(references)}
        res = {i: [g if g.strip() else "."] for i, g in enumerate(generated)}
        out: dict[str, np.ndarray] = {}
        if "meteor" in self.metrics:
            if self._meteor is None:
                raise RuntimeError("CaptionScorer is used outside its `with` block")
            out["meteor"] = np.asarray(self._meteor.compute_score(gts, res)[1], np.float64)
        if "cider" in self.metrics:
            out["cider"] = np.asarray(Cider().compute_score(gts, res)[1], np.float64)
        return out


class _Closed:
    """Stands in for the stopped METEOR process (pycocoevalcap's ``__del__`` closes it again)."""

    class _Pipe:
        def close(self) -> None:
            pass

    stdin = _Pipe()

    def kill(self) -> None:
        pass

    def wait(self) -> None:
        pass


def caption_scores(
    scorer: CaptionScorer,
    generated: Sequence[str],
    references: Sequence[str],
    n_shuffles: int = 10,
    seed: int = 0,
) -> dict[str, float]:
    """Mean METEOR / CIDEr of ``generated`` against their own references and the shuffled
    baseline (the mean over ``n_shuffles`` derangements of the references).

    Captions are PTB-tokenised first, as the COCO evaluation does.

    Returns
    -------
    dict
        ``{metric}`` and ``{metric}_shuffled`` for each metric of ``scorer``, and ``n_test``.
    """
    gen = tokenize(generated)
    ref = tokenize(references)
    own = scorer.score(gen, ref)
    out: dict[str, float] = {}
    for metric, values in own.items():
        out[metric] = float(values.mean())
    shuffled: dict[str, list[float]] = {m: [] for m in own}
    for perm in derangements(len(ref), int(n_shuffles), seed):
        for metric, values in scorer.score(gen, [ref[j] for j in perm]).items():
            shuffled[metric].append(float(values.mean()))
    for metric, values in shuffled.items():
        out[f"{metric}_shuffled"] = float(np.mean(values)) if values else float("nan")
    out["n_test"] = len(gen)
    return out
