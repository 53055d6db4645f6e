"""Shared by the data tests (test_data_manifest.py and test_data_adapters.py, split from
test_data.py): the sample rate, the repository root and small helpers that write short real
clips and text files. Not a test module (pytest collects test_*.py only); the test modules
import it as `data_support`, the way the reliability tests import reliability_support.
"""

import io
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000
REPO = Path(__file__).resolve().parents[1]


def tone(seconds=0.05, hz=220.0):
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def write_wav(path, seconds=0.05, hz=220.0):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(seconds, hz), SAMPLE_RATE)
    return path


def wav_bytes(hz=220.0):
    buffer = io.BytesIO()
    sf.write(buffer, tone(hz=hz), SAMPLE_RATE, format="WAV")
    return buffer.getvalue()


def write_lines(path, *lines):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path
