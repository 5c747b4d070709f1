"""Semantic features from captions: TF-IDF bag of words fitted on training captions only."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from brainpipe.errors import BrainpipeInputError
from brainpipe.features import check_columns, register_feature_model, table_source

if TYPE_CHECKING:  # scikit-learn takes ~1 s to import: only the features job needs it, not
    # config validation (which imports this registry) while Snakemake builds the DAG.
    from sklearn.feature_extraction.text import TfidfVectorizer


def fit_caption_vectorizer(train_captions: list[str]) -> TfidfVectorizer:
    """Fit the vocabulary and IDF weights on training captions.

    Parameters
    ----------
    train_captions : list of str, length n_train

    Returns
    -------
    vectorizer : TfidfVectorizer
        Lower-cased word unigrams (tokens of ≥ 2 characters), L2-normalised rows.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(lowercase=True, norm="l2", dtype=np.float32)
    vec.fit(train_captions)
    return vec


@register_feature_model("caption", required_columns=("caption",))
def caption(stimuli: pd.DataFrame, stimuli_dir: Path, train_mask: np.ndarray) -> np.ndarray:
    """TF-IDF bag-of-words features of each stimulus caption.

    The vocabulary and IDF weights are fitted on the captions of the training stimuli
    only: words that occur only in test captions are ignored.

    Parameters
    ----------
    stimuli : DataFrame
        Stimuli table with a ``caption`` column (missing captions count as empty).
    stimuli_dir : Path
        Unused.
    train_mask : ndarray of bool, shape (n_stimuli,)
        Training stimuli, on which the vocabulary is fitted.

    Returns
    -------
    features : ndarray of float32, shape (n_stimuli, n_vocabulary)
        L2-normalised rows (all-zero for captions with no training word).
    """
    source = table_source(stimuli)
    check_columns(stimuli, ["caption"], source)
    train_mask = np.asarray(train_mask, dtype=bool)
    captions = stimuli["caption"].fillna("").astype(str).tolist()
    train = [c for c, m in zip(captions, train_mask, strict=True) if m]
    try:
        vec = fit_caption_vectorizer(train)
    except ValueError as err:  # empty vocabulary
        raise BrainpipeInputError(
            source, "caption", f"no words in the training captions to build a vocabulary ({err})"
        ) from None
    return np.asarray(vec.transform(captions).toarray(), dtype=np.float32)
