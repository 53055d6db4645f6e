"""Shared fixtures: real embedded models, small real audio synthesised here."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Helper modules of the split test files, imported by them by name: their asserts report
# like the tests' own (and ratings_support, also a plugin for its fixture, is not warned about).
pytest.register_assert_rewrite("reliability_support", "ratings_support")


def speak(text: str, path: Path, *, pitch: int = 50, speed: int = 170, voice: str = "en-us") -> Path:
    """A real spoken clip from espeak-ng (a Debian package listed in packages.txt)."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is missing: install the Debian packages in packages.txt")
    subprocess.run(["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "-w", str(path), text],
                   check=True, capture_output=True)
    return path


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory) -> Path:
    return speak("They changed the schedule again.", tmp_path_factory.mktemp("audio") / "schedule.wav")


@pytest.fixture(scope="session")
def speech_16k(speech_wav) -> np.ndarray:
    from semollama_core.model.audio import load_audio

    return load_audio(speech_wav)


@pytest.fixture(scope="session")
def system_fp32():
    """The embedded system in full precision (faster on a CPU than nf4 for tests)."""
    from semollama_core.config import SEmoConfig
    from semollama_core.model.pipeline import load_system

    return load_system(SEmoConfig(quantization="none"))


@pytest.fixture(scope="session")
def frozen_llm_nf4():
    from semollama_core.config import SEmoConfig
    from semollama_core.model.llm import load_llm

    return load_llm(SEmoConfig(quantization="nf4"))


@pytest.fixture(scope="session")
def report_bad_input_count(request):
    """Prints, once at the end of the session, how many distinct bad or unusual inputs the
    reliability tests (test_reliability_*.py, which all use this fixture) tried, in total;
    they count them with reliability_support.tried."""
    yield
    from reliability_support import BAD_INPUTS

    refused, handled = len(BAD_INPUTS["refused"]), len(BAD_INPUTS["handled"])
    line = (f"reliability tests: {refused + handled} distinct bad or unusual inputs tried "
            f"({refused} refused with a clear message, {handled} handled: loaded, stored plain or shown inert)")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print("\n" + line)
