"""The context of a job script: its logging, warnings and progress bars go to its log file."""

from __future__ import annotations

import contextlib
import gc
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

from brainpipe.errors import BrainpipeInputError


@contextlib.contextmanager
def log_to(path: str | Path | None) -> Iterator[None]:
    """Redirect ``logging``, stdout and stderr (tqdm bars, warnings) to ``path``.

    An exception ends the job with exit status 1 after it is reported once: in the
    log file (with its traceback, unless it is a :class:`BrainpipeInputError`, whose
    message names the file and field) and as one line on stderr.
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
        except Exception as err:
            # One report per error: the log holds it (Snakemake prints the log of a failed
            # job), the terminal gets one line. Bad input is the user's to fix, not a bug:
            # its message names the file and field, and no traceback is shown for it.
            if isinstance(err, BrainpipeInputError):
                logging.getLogger("brainpipe").error("job failed: %s", err)
            else:
                logging.getLogger("brainpipe").exception("job failed")
            print(f"brainpipe: job failed: {type(err).__name__}: {err}", file=sys.stderr)
            raise SystemExit(1) from None
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
