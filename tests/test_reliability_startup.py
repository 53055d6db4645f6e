"""Reliability and security (issue 6), starting up: missing or corrupt adapter checkpoints,
unwritable data and model-cache folders, a model cache left by a crashed first run, and a
real `python app.py` process (`app_process`) that must never reveal its HF_TOKEN and is
killed mid-rating without losing an acknowledged rating.

Split from test_reliability.py (see also test_reliability_audio.py and
test_reliability_app.py). The distinct bad inputs tried are counted in
reliability_support and reported at the end of the test session.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import soundfile as sf
from gradio_client import Client
from gradio_client.exceptions import AppError

from reliability_support import (ADMIN_PASSWORD, HF_SECRET, RATING_SET, ROOT, http_get, one_line_error,
                                 tone, tried)

# The distinct bad inputs tried, counted across the reliability tests, printed at the end of the session.
pytestmark = pytest.mark.usefixtures("report_bad_input_count")


# ============================================================================= Checkpoints and folders
def _adapter_checkpoint(folder: Path) -> Path:
    from semollama_core.model.adapter import AdapterConfig, SpeechAdapter, save_adapter

    return save_adapter(SpeechAdapter(AdapterConfig(num_blocks=1, d_model=64, ffn_dim=64, num_heads=2)), folder)


def _break_checkpoint(folder: Path, how: str) -> Path:
    weights, config = folder / "adapter.safetensors", folder / "adapter_config.json"
    if how == "missing_weights":
        weights.unlink()
        return weights
    if how == "missing_config":
        config.unlink()
        return config
    if how == "truncated_weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        return weights
    if how == "garbage_weights":
        weights.write_bytes(b"\x00" * 64)
        return weights
    if how == "garbage_config":
        config.write_text("{ not json")
        return config
    if how == "wrong_shapes":
        data = json.loads(config.read_text())
        config.write_text(json.dumps({**data, "d_model": 32}))
        return weights
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["missing_folder", "missing_nested_folder", "missing_weights", "missing_config", "truncated_weights",
                                 "garbage_weights", "garbage_config", "wrong_shapes"])
def test_missing_or_corrupt_adapter_checkpoint_names_the_file_and_the_fix(how, tmp_path, monkeypatch):
    from semollama_core.model.adapter import CheckpointError, load_adapter

    monkeypatch.chdir(tmp_path)  # a relative location, as a user would type it
    if how.startswith("missing") and how.endswith("folder"):  # "runs/typo" could also be a Hub repo id
        location = named = "runs/typo" if how == "missing_folder" else "runs/1/typo"
    else:
        folder = _adapter_checkpoint(tmp_path / "adapter")
        location, named = "adapter", str(_break_checkpoint(folder, how).name)
    with pytest.raises(CheckpointError) as caught:
        load_adapter(location)
    message = one_line_error(caught)
    assert named in message, message
    assert any(fix in message for fix in ("retrain", "Retrain", "restore", "train one", "set adapter", "local checkpoint folder")), message
    tried("refused", f"checkpoint:{how}")


def test_unwritable_data_dir_names_the_folder_and_the_fix_in_the_app(tmp_path, monkeypatch):
    from ui.backend import AppSettings, Backend
    from ui.rate import next_item

    blocker = tmp_path / "a_file"
    blocker.write_text("a file where the data folder should be")
    monkeypatch.setenv("SEMOLLAMA_DATA_DIR", str(blocker / "data"))
    monkeypatch.delenv("SEMOLLAMA_RATINGS_URL", raising=False)
    backend = Backend(lambda: None, AppSettings(ratings_url=None, rating_set=RATING_SET))
    with pytest.raises(ValueError) as caught:  # the Rate tab shows it as one gr.Error line
        next_item(backend, "ann1")
    message = one_line_error(caught)
    assert str(blocker / "data") in message and "SEMOLLAMA_DATA_DIR" in message
    tried("refused", "config:unwritable-data-dir")


def test_unwritable_model_cache_names_the_folder_and_the_fix_on_the_command_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("a file where the cache folder should be")
    clip = tmp_path / "clip.wav"
    sf.write(clip, tone(16000), 16000, subtype="PCM_16")
    env = {**os.environ, "SEMOLLAMA_CACHE": str(blocker / "cache"), "SEMOLLAMA_QUANTIZATION": "none"}
    out = subprocess.run([sys.executable, "-m", "semollama_core", "respond", str(clip)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode != 0 and out.stdout == ""
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-800:]
    assert str(blocker / "cache") in lines[0] and "SEMOLLAMA_CACHE" in lines[0]
    tried("refused", "config:unwritable-model-cache")


def test_model_cache_left_by_a_crashed_first_run_is_cleaned(tmp_path):
    """A kill during the first conversion leaves a staging folder (the size of the model);
    the next start removes it. (A half-written model folder itself is rebuilt: test_core.)"""
    from semollama_core.model.llm import COMPLETE_MARKER, embedded_llm_path

    target = tmp_path / "smollm2-135m-instruct"
    target.mkdir()
    (target / COMPLETE_MARKER).write_text("{}")  # a later run finished the conversion
    stale = tmp_path / ".staging-crashed"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\x00" * 4096)  # cut off mid-write
    assert embedded_llm_path(tmp_path) == target
    assert not stale.exists()


# ============================================================================= a real app process
@dataclass
class AppProcess:
    """`python app.py` in a subprocess with everything it may write inside one folder and an
    HF_TOKEN in its environment. Its LLM setting names an empty folder, so the background
    warm-up fails at once (and says so) instead of spending the CPU on a model the ratings
    do not need."""
    work: Path
    server: object = None

    def ensure_running(self):
        from ui.loadtest import LoadOptions, start_server

        if self.server is None or self.server.process.poll() is not None:
            folder = self.work / f"run{time.time_ns()}"
            folder.mkdir(parents=True)
            for name in ("home", "tmp", "gradio", "no-model"):
                (folder / name).mkdir()
            env = {"HF_TOKEN": HF_SECRET, "SEMOLLAMA_ADMIN_PASSWORD": ADMIN_PASSWORD,
                   "SEMOLLAMA_LLM": str(folder / "no-model"), "HOME": str(folder / "home"),
                   "TMPDIR": str(folder / "tmp"), "GRADIO_TEMP_DIR": str(folder / "gradio"),
                   "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONUNBUFFERED": "1"}
            self.server = start_server(folder, LoadOptions(), time.monotonic() + 180, env=env)
            self.server.started = time.time()
            self.server.folder = folder
        return self.server

    def stop(self):
        if self.server is not None:
            self.server.stop()


@pytest.fixture(scope="module")
def app_process(tmp_path_factory):
    process = AppProcess(tmp_path_factory.mktemp("app_process"))
    yield process
    process.stop()


def test_hf_token_never_logged_shown_or_written_to_disk(app_process):
    server = app_process.ensure_running()
    client = Client(server.url, verbose=False)
    shown = [client.predict("token_checker", api_name="/rate_next")]
    shown.append(client.predict("A", 3, 3, 3, 3, "checking the token", api_name="/rate_submit"))
    with pytest.raises(AppError, match="cannot reach the Hugging Face Hub") as push_error:
        client.predict(ADMIN_PASSWORD, "someone/ratings", api_name="/rate_push")
    shown.append(str(push_error.value))
    shown.append(Path(client.predict(ADMIN_PASSWORD, api_name="/rate_export")).read_text())
    shown.append(client.predict(ADMIN_PASSWORD, api_name="/rate_results"))
    for page in ("", "config", "gradio_api/info"):
        shown.append(http_get(server.url + page)[1].decode(errors="replace"))
    client.close()
    server_log_before_stop = server.log.read_bytes()
    app_process.stop()  # flushes and closes everything it had open
    assert HF_SECRET not in json.dumps(shown, default=str)
    assert HF_SECRET.encode() not in server_log_before_stop + server.log.read_bytes()
    assert b"warm-up:" in server.log.read_bytes()  # the failing model load was reported, in one line
    written = [p for p in server.folder.rglob("*") if p.is_file()]
    written += [p for p in ROOT.rglob("*") if ".git" not in p.parts and _written_since(p, server.started)]
    names = {p.name for p in written}
    assert "ratings.sqlite" in names and any(n.endswith(".csv") for n in names)  # where a leak would land
    assert not [p for p in written if _holds(p, HF_SECRET.encode())]


def _written_since(path: Path, started: float) -> bool:
    try:  # other jobs write in the checkout at the same time; their files may vanish
        info = path.stat()
    except OSError:
        return False
    return path.is_file() and info.st_mtime >= started and info.st_size < 64 * 2**20


def _holds(path: Path, secret: bytes) -> bool:
    try:
        return secret in path.read_bytes()
    except OSError:
        return False


def test_app_kill_mid_rating_leaves_db_consistent(app_process):
    server = app_process.ensure_running()
    acknowledged: list[str] = []
    stop = threading.Event()

    def rate_in_a_loop(worker: int) -> None:
        client = Client(server.url, verbose=False)
        for round_ in range(1000):
            annotator = f"killed{worker}x{round_}"
            try:
                screen = client.submit(annotator, api_name="/rate_next").result(timeout=30)
                while screen[3] and not stop.is_set():
                    tag = f"kill:{annotator}:{len(acknowledged)}:{time.time_ns()}"
                    screen = client.submit("tie", 2, 3, 4, 5, tag, api_name="/rate_submit").result(timeout=30)
                    if screen[0].startswith("Saved"):
                        acknowledged.append(tag)
            except Exception:  # noqa: BLE001 - the server was killed under us: expected
                return
            if stop.is_set():
                return

    workers = [threading.Thread(target=rate_in_a_loop, args=(i,), daemon=True) for i in range(4)]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + 90
    while len(acknowledged) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(server.process.pid, signal.SIGKILL)  # no shutdown, no cleanup: mid-rating
    server.process.wait(30)
    stop.set()
    for worker in workers:
        worker.join(60)
    confirmed = list(acknowledged)
    assert len(confirmed) >= 20, "the raters did not get going before the deadline"
    db = Path(server.db_url.removeprefix("sqlite:///"))
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        stored = [row[0] for row in conn.execute("SELECT comment FROM ratings WHERE comment LIKE 'kill:%'")]
        per_item = conn.execute("SELECT count(*) FROM (SELECT annotator_id, item_id FROM ratings "
                                "GROUP BY annotator_id, item_id HAVING count(*) > 1)").fetchone()[0]
    assert all(stored.count(tag) == 1 for tag in confirmed)  # every acknowledged rating, once
    assert len(stored) <= len(confirmed) + len(workers)  # at most the ones in flight besides
    assert per_item == 0
    # The database is usable again at once (the WAL is replayed, no lock is left behind).
    from ui.ratings import RatingStore

    store = RatingStore(server.db_url)
    assignment = store.next_assignment("after_the_kill", "loadtest")
    store.submit_rating(assignment.token, "after_the_kill", "A", empathy_a=1, empathy_b=2, quality_a=3, quality_b=4)
    store.close()
