"""Shared by the reliability tests (test_reliability_audio.py, test_reliability_app.py,
test_reliability_startup.py): constants, the count of distinct bad inputs tried, and small
helpers. Not a test module (pytest collects test_*.py only); the test modules import it as
`reliability_support`, the way they import conftest_app. The count is printed once at the
end of the test session by the `report_bad_input_count` fixture in conftest.py.
"""
from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from semollama_core.model.audio import load_audio

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_NAMES = ("speech_llm", "text_only", "cascade", "neutral_aligned", "oracle")
ADMIN_PASSWORD = "rel-admin-pw"
HF_SECRET = "hf_RelTestSecret0123456789abcdefXYZ"
RATING_SET = "reliability"
HOSTILE_HTML = '<script>alert("x")</script><img src=x onerror=alert(1)>'
HOSTILE_MARKDOWN = "**bold** [click](javascript:alert(1)) ![img](http://x/y.png) # head `code` | a |"

# ----------------------------------------------------------------------------- bookkeeping
BAD_INPUTS: dict[str, set[str]] = {"refused": set(), "handled": set()}


def tried(outcome: str, *names: str) -> None:
    """Note a distinct bad or unusual input and how it ended: refused with a clear message,
    or handled (loaded, stored as plain text, rendered inert)."""
    BAD_INPUTS[outcome].update(names)


def one_line_error(caught) -> str:
    message = str(caught.value)
    assert "\n" not in message.strip() and "Traceback" not in message, message
    return message


# ----------------------------------------------------------------------------- audio helpers
def tone(rate: int, seconds: float = 1.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    mono = 0.5 * np.sin(2 * np.pi * 220 * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))
    samples = mono[:, None] * np.linspace(1.0, 0.4, channels)  # channels differ: the mono mix is checked
    return samples[:, 0] if channels == 1 else samples


def reference(rate: int = 16000, channels: int = 1) -> np.ndarray:
    samples = tone(rate, channels=channels)
    return load_audio((rate, (samples.mean(axis=1) if channels > 1 else samples).astype(np.float32)))


def clip_bytes(app_server, emotion: str) -> bytes:
    return (app_server.examples_dir / f"{emotion}_1.wav").read_bytes()


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=20) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
