"""Encoding-model jobs: kept as the historical entry point; the model zoo lives in
:mod:`brainpipe.models` (registry, encoders, decoders, evaluation, jobs)."""

from __future__ import annotations

from brainpipe.models.data import average_test_responses, roi_betas
from brainpipe.models.jobs import collect_summary, evaluate_job, train_job

__all__ = ["average_test_responses", "collect_summary", "evaluate_job", "roi_betas", "train_job"]
