"""The context of a job script: its logging, warnings and progress bars go to its log file."""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def log_to(path: str | Path | None) -> Iterator[None]:
    """Redirect ``logging``, stdout and stderr (tqdm bars, warnings) to ``path``.

    With ``path=None`` everything goes to the terminal as usual. Meant to wrap the
    whole of a job script (``workflow/scripts``): once the job's work is done, the
    objects it holds are frozen out of the garbage collector's reach
    (:func:`spare_final_collections`), so the ending process exits at once.
    """
    if path is None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        yield
        spare_final_collections()
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", buffering=1) as fh:
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            with contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
                yield
            spare_final_collections()
        except BaseException:
            logging.getLogger("brainpipe").exception("job failed")
            raise
        finally:
            root.removeHandler(handler)


def spare_final_collections() -> None:
    """Freeze every object now alive out of the cyclic garbage collector's reach.

    For a process about to end: at exit the interpreter runs full collections over
    everything the job imported (numpy, zarr, pandas, boto3: about a million
    objects), which took 0.3 s of every job's wall time here (``perf``); frozen
    objects are skipped and still freed by reference counting. Objects made
    afterwards are collected as usual.
    """
    gc.freeze()
