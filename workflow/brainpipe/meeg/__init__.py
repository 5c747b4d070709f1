"""The M/EEG branch: THINGS-EEG2 and THINGS-MEG from raw recordings to zero-shot retrieval.

Modules, one per concept:

- :mod:`.things_eeg2` — THINGS-EEG2's raw files as published (one pickled ``.npy`` dict
  per subject, session and partition) and its registry download over HTTP.
- :mod:`.bids_meg` — BIDS MEG runs (THINGS-MEG, OpenNeuro ds004212) read with mne-bids.
- :mod:`.synthetic` — a synthetic M/EEG world with ground truth, written in those formats.
- :mod:`.preprocess` — MNE preprocessing to ``epochs.zarr`` (filter, epochs, baseline,
  resampling, multivariate noise normalisation fitted on training epochs only).
- :mod:`.decoding` — time-resolved decoding and the NICE-style contrastive encoder,
  registered in the model registry, and zero-shot retrieval scores.
"""
