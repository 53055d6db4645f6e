"""Start-up: a bad SEMOLLAMA_* value is one line and a non-zero exit; the shipped checkpoint is
never silently replaced by an untrained adapter; the model slot lets Talk go before evaluation chunks."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name, value, message", [
    ("SEMOLLAMA_MAX_UPLOAD_MB", "abc", "SEMOLLAMA_MAX_UPLOAD_MB must be an integer"),
    ("SEMOLLAMA_MAX_UPLOAD_MB", "0", "between 1 and"),
    ("SEMOLLAMA_QUEUE_SIZE", "-3", "SEMOLLAMA_QUEUE_SIZE must be between"),
    ("SEMOLLAMA_QUANTIZATION", "nf5", "quantization must be one of"),
    ("SEMOLLAMA_LABELS", "neutral,,sad", "SEMOLLAMA_LABELS: '' is not a label"),
    ("SEMOLLAMA_LABELS", "neutral, sad", "' sad' is not a label"),
    ("SEMOLLAMA_SHOW_TRANSCRIPT", "maybe", "SEMOLLAMA_SHOW_TRANSCRIPT must be one of"),
    ("SEMOLLAMA_DEVICE", "gpu", "SEMOLLAMA_DEVICE must be"),
    ("SEMOLLAMA_ADAPTER", "/nonexistent/adapter", "adapter checkpoint /nonexistent/adapter is missing"),
    ("SEMOLLAMA_ENGLISH_THRESHOLD", "high", "english_threshold must be a number"),
    ("SEMOLLAMA_ENGLISH_THRESHOLD", "1.5", "english_threshold must be between 0 and 1"),
    ("SEMOLLAMA_OTHER_LANGUAGE_ADAPTER", "/nonexistent/other", "other-language adapter /nonexistent/other is missing"),
])
def test_startup_check_names_the_bad_value(monkeypatch, name, value, message):
    import app

    monkeypatch.setenv(name, value)
    error, _ = app.startup_check()
    assert error is not None and message in error and "\n" not in error


def test_the_missing_shipped_checkpoint_is_an_error_not_a_fresh_adapter(monkeypatch, tmp_path):
    import app
    from semollama_core.config import ASSETS

    # The shipped default, as a copy of the repo without assets/ would see it.
    monkeypatch.setattr(app, "ASSETS", tmp_path)
    monkeypatch.setenv("SEMOLLAMA_ADAPTER", str(tmp_path / "speech_llm"))
    error, _ = app.startup_check()
    assert "shipped adapter checkpoint" in error and "never answers with an untrained adapter" in error
    monkeypatch.setenv("SEMOLLAMA_ADAPTER", str(ASSETS / "speech_llm"))
    assert app.startup_check()[0] is None


def test_a_missing_optional_checkpoint_is_a_plain_warning_above_the_tabs(monkeypatch, tmp_path):
    import app

    monkeypatch.setenv("SEMOLLAMA_CONFIG", str(tmp_path / "config.json"))
    (tmp_path / "config.json").write_text('{"neutral_adapter": "%s"}' % (tmp_path / "gone"))
    error, warnings = app.startup_check()
    assert error is None and any("neutral_aligned adapter" in w for w in warnings)
    demo = app.build_demo(lambda: None, warnings=warnings)
    shown = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "startup-warnings"]
    assert shown and "neutral\\_aligned adapter" in shown[0].value


def test_python_app_py_with_a_bad_value_prints_one_line_and_exits_2():
    env = {**os.environ, "SEMOLLAMA_MAX_UPLOAD_MB": "abc"}
    done = subprocess.run([sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr[-2000:]
    assert lines == ["error: SEMOLLAMA_MAX_UPLOAD_MB must be an integer, not 'abc'"], lines


def test_an_interactive_turn_goes_before_the_next_batch_chunk():
    from ui.backend import ModelSlot

    slot, chunks, stop = ModelSlot(), [], threading.Event()

    def evaluation():  # chunk after chunk, as ui/evaluate.py runs one
        while not stop.is_set():
            with slot.batch():
                chunks.append(("start", time.perf_counter()))
                time.sleep(0.2)
                chunks.append(("end", time.perf_counter()))

    worker = threading.Thread(target=evaluation, daemon=True)
    worker.start()
    time.sleep(0.5)
    asked = time.perf_counter()
    with slot.interactive():
        got = time.perf_counter()
        time.sleep(0.5)  # a Talk turn longer than a chunk: no chunk may start meanwhile
        left = time.perf_counter()
    stop.set()
    worker.join(5)
    assert got - asked < 0.35  # at most the rest of one chunk
    assert not [t for kind, t in chunks if kind == "start" and got <= t < left]
    assert [t for kind, t in chunks if kind == "start" and t >= left]  # the evaluation went on after it


def test_the_library_refuses_a_missing_shipped_checkpoint_too(monkeypatch, tmp_path):
    import semollama_core.config as config
    from semollama_core.config import ConfigError
    from semollama_core.model.pipeline import SEmoLlama

    monkeypatch.setattr(config, "ASSETS", tmp_path)  # a copy of the repo without assets/
    with pytest.raises(ConfigError, match="shipped adapter checkpoint .* is missing"):
        SEmoLlama._adapter(object(), str(tmp_path / "speech_llm"))  # raises before any model is touched


def test_a_missing_other_language_adapter_is_a_plain_warning_not_a_silent_change(monkeypatch, tmp_path):
    import app
    from semollama_core import config

    # the shipped default, as a copy of the repo without assets/speech_llm_multilingual would see it
    (tmp_path / "speech_llm").mkdir()
    monkeypatch.setattr(app, "ASSETS", tmp_path)
    monkeypatch.setattr(config, "ASSETS", tmp_path)
    monkeypatch.setenv("SEMOLLAMA_ADAPTER", str(tmp_path / "speech_llm"))
    error, warnings = app.startup_check()
    assert error is None and any("other-language adapter" in w and "no language router" in w for w in warnings)
    (tmp_path / "speech_llm_multilingual").mkdir()
    assert not any("language router" in w for w in app.startup_check()[1])
