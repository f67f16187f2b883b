"""The ``bench`` logger. Progress lines go to stderr as ``[bench] message`` through tqdm (so they do not tear a
progress bar), and only from the main process of a distributed training (RANK 0), so one run speaks once."""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger("bench")


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never stop a run
            self.handleError(record)


class _MainRank(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return os.environ.get("RANK", "0") == "0"


def _install() -> None:
    if any(isinstance(h, _TqdmHandler) for h in log.handlers):
        return
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("[bench] %(message)s"))
    handler.addFilter(_MainRank())
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # a host application's root handlers would print each line twice


_install()
