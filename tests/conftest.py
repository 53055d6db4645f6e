"""Shared fixtures: real embedded models, small real audio synthesised here."""
from __future__ import annotations

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
