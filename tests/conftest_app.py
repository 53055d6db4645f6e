"""One app server per test session, shared by test_app_api.py and test_browser.py.

Loaded with `pytest_plugins = ["conftest_app"]` so that the session fixture is defined
once (a fixture imported into two modules would start two servers). The system is the
embedded default (SEMOLLAMA_QUANTIZATION=none unless set, for speed) with 8 new tokens.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ADMIN_PASSWORD = "s3cret-admin"
MAX_NEW_TOKENS = 8
MAX_UPLOAD_MB = 2
# Ambiguous sentences read with the acted-emotion cues of EXPRESSIVE_SPEECH.md (pitch,
# rate, level) as far as espeak-ng can: temporary stand-ins for the lead's examples.
EXAMPLE_CLIPS = (
    ("neutral", 50, 150, 100, "They changed the schedule again for the whole team this week."),
    ("happy", 80, 185, 150, "The bank called about my account this morning, just after nine."),
    ("sad", 25, 115, 60, "I saw the letter on the kitchen table when I came home."),
    ("angry", 60, 200, 190, "We are moving to a new office at the end of next month."),
)


def synthesise(path: Path, text: str, pitch: int = 50, speed: int = 160, amplitude: int = 100) -> Path:
    subprocess.run(["espeak-ng", "-p", str(pitch), "-s", str(speed), "-a", str(amplitude), "-w", str(path), text],
                   check=True, capture_output=True)
    return path


def make_examples(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for emotion, pitch, speed, amplitude, text in EXAMPLE_CLIPS:
        synthesise(folder / f"{emotion}_1.wav", text, pitch, speed, amplitude)
        rows.append({"audio": f"{emotion}_1.wav", "emotion": emotion, "transcript": text})
    (folder / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(demo):
    """Launch a built demo on a free local port, yield its URL, close it after."""
    import app

    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True,
                **app.launch_options(demo))
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@dataclass(frozen=True)
class AppServer:
    url: str
    demo: object
    examples_dir: Path
    work_dir: Path
    admin_password: str = ADMIN_PASSWORD
    max_upload_mb: int = MAX_UPLOAD_MB

    @staticmethod
    def synthesise(path: Path, text: str, **voice) -> Path:
        return synthesise(path, text, **voice)


@pytest.fixture(scope="session")
def app_server(tmp_path_factory) -> AppServer:
    import app
    from semollama_core.config import SEmoConfig
    from semollama_core.model.pipeline import load_system
    from ui.backend import AppSettings

    work = tmp_path_factory.mktemp("app")
    examples = make_examples(work / "examples")
    quantization = os.environ.get("SEMOLLAMA_QUANTIZATION") or "none"

    def system_factory():
        return load_system(SEmoConfig.from_env(max_new_tokens=MAX_NEW_TOKENS, quantization=quantization))

    settings = AppSettings(examples_dir=str(examples), ratings_url=f"sqlite:///{work / 'ratings.sqlite'}",
                           admin_password=ADMIN_PASSWORD, max_upload_mb=MAX_UPLOAD_MB, queue_size=8)
    demo = app.build_demo(system_factory, settings)
    with served(demo) as url:
        yield AppServer(url, demo, examples, work)
