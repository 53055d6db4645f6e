"""Quiet third-party libraries: stdout stays clean for JSON, stderr one line per problem."""
from __future__ import annotations

import logging
import os


def quiet_libraries() -> None:
    """Keep stdout clean for JSON and stderr to one line per problem."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("bitsandbytes", "transformers", "faster_whisper", "httpx", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import warnings

    warnings.filterwarnings("ignore")
