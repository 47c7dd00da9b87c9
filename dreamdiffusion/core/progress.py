"""Progress bars that suit where the output goes: live in a terminal, sparse in a log file.

tqdm redraws a bar many times a second; written into a non-interactive log (`make repro > log`,
CI, DVC's captured output) every redraw is a line. Away from a terminal the bars here update at
most every `LOG_INTERVAL` seconds; `DREAMDIFFUSION_PROGRESS=0` turns them off entirely.
"""
from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm

LOG_INTERVAL = 60.0  # seconds between updates when stderr is not a terminal


def progress(iterable=None, **kwargs):
    """`tqdm(iterable, **kwargs)`, rate-limited when stderr is not a TTY (or off, by the env var)."""
    if os.environ.get("DREAMDIFFUSION_PROGRESS", "1") == "0":
        kwargs["disable"] = True
    elif not sys.stderr.isatty():
        kwargs["mininterval"] = max(kwargs.get("mininterval", 0.1), LOG_INTERVAL)
        kwargs.setdefault("ascii", True)
    return tqdm(iterable, **kwargs)
