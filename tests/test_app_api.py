"""The app's every event handler, driven through gradio_client against a live server."""
from __future__ import annotations

import dataclasses
import json
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

pytest_plugins = ["conftest_app"]

SYSTEM_NAMES = ("speech_llm", "text_only", "cascade")
API_NAMES = {"/load_example", "/talk", "/describe", "/inspect", "/inspect_layer", "/inspect_head", "/evaluate",
             "/evaluate_source",
             "/evaluate_item", "/evaluate_select", "/rate_next", "/rate_next_enter", "/rate_submit",
             "/rate_skip", "/rate_results", "/rate_export", "/rate_export_jsonl", "/rate_push"}


@pytest.fixture(scope="module")
def client(app_server) -> Client:
    return Client(app_server.url, verbose=False)


def new_client(app_server) -> Client:
    return Client(app_server.url, verbose=False)


def test_every_handler_has_a_named_api(client):
    endpoints = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert API_NAMES <= endpoints, API_NAMES - endpoints


def test_a_full_queue_refuses_with_a_clear_message(app_server):
    import app

    release = threading.Event()

    def slow_factory():  # the first request holds the model slot until released
        release.wait(60)
        return app_server.demo.backend.system

    demo = app.build_demo(slow_factory, dataclasses.replace(app_server.demo.backend.settings, queue_size=1))
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    try:
        client = Client(url, verbose=False)
        jobs = []
        for _ in range(3):
            jobs.append(client.submit(api_name="/describe"))
            time.sleep(1.0)
        release.set()
        outcomes = []
        for job in jobs:
            try:
                outcomes.append(job.result(timeout=60)[0])
            except Exception as error:  # noqa: BLE001 - the refusal is what we look for
                outcomes.append(str(error))
        assert sum("Queue is full" in o for o in outcomes) == 1, outcomes
        assert sum("smollm2" in o for o in outcomes) == 2, outcomes
    finally:
        release.set()
        demo.close()


def test_the_bundled_examples_are_listed_when_present():
    from ui.backend import AppSettings, Backend

    examples = Backend(lambda: None, AppSettings()).examples()
    if not examples:
        pytest.skip("no assets/examples/examples.jsonl in this copy")
    assert all(e.path.is_file() and e.emotion for e in examples)
    assert len({e.label for e in examples}) == len(examples)  # the dropdown can tell them apart


def test_a_missing_examples_folder_means_no_examples(tmp_path):
    from ui.backend import AppSettings, Backend

    assert Backend(lambda: None, AppSettings(examples_dir=str(tmp_path / "absent"))).examples() == []


def test_describe_shows_the_running_configuration(client):
    text, max_new_tokens = client.predict(api_name="/describe")
    assert "smollm2" in text and "quantization" in text
    assert max_new_tokens["value"] == 8  # the token slider starts at the running configuration's


def test_load_example_gives_its_audio_and_label(client, app_server):
    audio, info = client.predict("sad_1.wav", api_name="/load_example")
    assert Path(audio).read_bytes() == (app_server.examples_dir / "sad_1.wav").read_bytes()
    assert "sad" in info


def test_load_example_refuses_unlisted_files(client):
    with pytest.raises(AppError, match="No bundled example|not in the list|choices"):
        client.predict("../../etc/passwd", api_name="/load_example")


def talk(client: Client, audio: Path, **settings):
    job = client.submit(handle_file(str(audio)), settings.get("max_new_tokens", 8), 0.0,
                        settings.get("system_prompt", ""), api_name="/talk")
    outputs = job.result()
    return outputs, job.outputs()


def test_talk_streams_three_answers_with_emotion_and_latency(app_server):
    client = new_client(app_server)
    outputs, stream = talk(client, app_server.examples_dir / "happy_1.wav")
    transcript, emotion, chart, *rest = outputs
    answers, latencies, timings = rest[:3], rest[3:6], rest[6]
    assert "called about my account" in transcript.lower()
    assert "Predicted emotion" in emotion and chart is not None
    assert all(answers), answers
    assert all("first token" in text for text in latencies)
    assert 0 < timings["timings_s"]["first_response_s"] < timings["timings_s"]["total_s"]
    assert all(timings["latencies"][s]["tokens"] >= 1 for s in SYSTEM_NAMES)
    # Streaming: the speech answer grows over several messages before the text systems start.
    partial = [o[3] for o in stream if o[3] and not o[4]]
    assert len(partial) >= 2 and len(set(partial)) >= 2


def test_talk_first_response_latency_for_a_3s_clip(app_server, tmp_path):
    clip = app_server.synthesise(tmp_path / "three.wav", "I did not expect to hear from you so soon today", speed=150)
    assert 2.5 < sf.info(str(clip)).duration < 3.8
    client = new_client(app_server)
    started = time.perf_counter()
    outputs, _ = talk(client, clip)
    wall = time.perf_counter() - started
    first = outputs[-1]["timings_s"]["first_response_s"]
    print(f"\nfirst response for a {sf.info(str(clip)).duration:.1f} s clip: {first:.2f} s "
          f"(server), whole turn {wall:.2f} s (client)")
    assert first < wall


@pytest.mark.parametrize("content, message", [
    (b"this is not audio at all", "not a readable audio file|could not decode|cannot"),
    (None, "silent"),
])
def test_talk_bad_audio_is_a_clear_error_and_the_app_stays_up(app_server, tmp_path, content, message):
    path = tmp_path / "bad.wav"
    if content is None:
        sf.write(path, np.zeros(16000, dtype=np.float32), 16000)
    else:
        path.write_bytes(content)
    client = new_client(app_server)
    with pytest.raises(AppError, match=message):
        client.predict(handle_file(str(path)), 8, 0.0, "", api_name="/talk")
    assert "smollm2" in client.predict(api_name="/describe")[0]


def test_upload_larger_than_the_limit_is_refused(app_server, tmp_path):
    big = tmp_path / "big.wav"
    sf.write(big, np.random.default_rng(0).uniform(-0.1, 0.1, (app_server.max_upload_mb * 2**20) // 2 + 16000)
             .astype(np.int16), 16000, subtype="PCM_16")
    with pytest.raises(Exception, match="(?i)size|large|413"):
        new_client(app_server).predict(handle_file(str(big)), 8, 0.0, "", api_name="/talk")


def test_inspect_needs_a_talk_run_first(app_server):
    with pytest.raises(AppError, match="run a clip in the Talk tab first"):
        new_client(app_server).predict(api_name="/inspect")


def test_inspect_shows_attention_of_the_last_run(app_server):
    client = new_client(app_server)
    talk(client, app_server.examples_dir / "neutral_1.wav")
    summary, heatmap, share, npz_path, layer, head = client.predict(api_name="/inspect")
    assert "layers" in summary and heatmap is not None and share is not None
    with np.load(npz_path) as raw:
        layers, heads, generated, positions = raw["attentions"].shape
        segments = list(raw["segments"])
    assert {"system", "speech", "instruction"} <= set(segments) and len(segments) == positions
    assert layer["value"] == layers // 2 and layer["maximum"] == layers - 1
    assert head["value"] == "mean of heads" and len(head["choices"]) == heads + 1
    assert client.predict(layers - 1, "mean of heads", api_name="/inspect_layer")[0] is not None
    assert client.predict(0, "2", api_name="/inspect_head")[0] is not None
    with pytest.raises(AppError, match="head must be a whole number"):
        client.predict(0, str(heads), api_name="/inspect_head")


def test_evaluate_bundled_examples(app_server):
    client = new_client(app_server)
    notes, metrics, confusion, items, csv_path, json_path, index, first_audio, _ = client.predict(
        "bundled examples", None, None, ["speech_llm", "text_only", "standalone"], 4, api_name="/evaluate")
    systems = [row[0] for row in metrics["data"]]
    assert systems[:2] == ["speech_llm", "text_only"]
    assert confusion is not None and len(items["data"]) == 4
    assert index == 0 and Path(first_audio).name == "neutral_1.wav"  # the player starts at the first item
    scores = json.loads(Path(json_path).read_text())
    assert {"ua", "wa", "macro_f1", "confusion"} <= set(scores["systems"]["speech_llm"])
    assert "emotion,system,predicted" in Path(csv_path).read_text().splitlines()[0]
    if "standalone" not in systems:
        assert "standalone" in notes
    audio, info = client.predict(2, api_name="/evaluate_item")
    assert Path(audio).name.endswith(".wav") and "True emotion" in info
    # Without a selected cell (API callers send no event data) the item number stays as is.
    assert client.predict(api_name="/evaluate_select") == {"__type__": "update"}


def zipped_upload(app_server, folder: Path, manifest_rows: list[dict], extra_entry: str | None = None):
    archive = folder / "audio.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for row in manifest_rows:
            z.write(app_server.examples_dir / Path(row["audio"]).name, row["audio"])
        if extra_entry:
            z.writestr(extra_entry, b"x")
    manifest = folder / "set.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in manifest_rows))
    return manifest, archive


def test_evaluate_source_switch_answers(client):
    # It only shows or hides the upload fields (a layout block, not in the API's outputs);
    # test_browser.py checks what it does on screen.
    assert client.predict("upload", api_name="/evaluate_source") == ()


def test_evaluate_an_uploaded_manifest_and_zip(app_server, tmp_path):
    rows = [{"audio": "clips/happy_1.wav", "emotion": "happy"}, {"audio": "clips/sad_1.wav", "emotion": "sad"}]
    manifest, archive = zipped_upload(app_server, tmp_path, rows)
    client = new_client(app_server)
    _, metrics, _, items, *_ = client.predict("upload", handle_file(str(manifest)), handle_file(str(archive)),
                                                ["speech_llm"], 10, api_name="/evaluate")
    assert [row[0] for row in metrics["data"]] == ["speech_llm"] and len(items["data"]) == 2


def test_evaluate_refuses_a_zip_slip_archive(app_server, tmp_path):
    rows = [{"audio": "happy_1.wav", "emotion": "happy"}, {"audio": "sad_1.wav", "emotion": "sad"}]
    manifest, archive = zipped_upload(app_server, tmp_path, rows, extra_entry="../escape.txt")
    with pytest.raises(AppError, match="zip slip"):
        new_client(app_server).predict("upload", handle_file(str(manifest)), handle_file(str(archive)),
                                       ["speech_llm"], 10, api_name="/evaluate")
    assert not (tmp_path.parent / "escape.txt").exists()


def test_rating_is_blind_resumable_and_scored(app_server):
    client = new_client(app_server)
    shown = client.predict("api_annotator", api_name="/rate_next")
    status, audio, transcript, response_a, response_b = shown[:5]
    assert "0 of 6" in status and Path(audio).suffix == ".wav" and response_a and response_b  # 4 examples, 2 gold
    assert transcript == ""  # hidden by default: annotators judge from the audio
    # Nothing on screen names a system before the vote.
    assert not any(name in json.dumps(shown) for name in SYSTEM_NAMES)
    resumed = new_client(app_server).predict("api_annotator", api_name="/rate_next_enter")
    assert resumed[3:5] == shown[3:5]  # same open item, same A/B order
    with pytest.raises(AppError, match="Choose which response is better"):
        client.predict(None, 4, 2, 4, 3, "", api_name="/rate_submit")
    after = client.predict("A", 4, 2, 4, 3, "<b>good</b>", api_name="/rate_submit")
    assert after[0].startswith("Saved") and "1 of 6" in after[0]
    client.predict("tie", 3, 3, 3, 3, "", api_name="/rate_submit")
    client.predict("both_bad", 2, 2, 2, 2, "", api_name="/rate_submit")  # three: at least one is not gold
    with pytest.raises(AppError, match="wrong or missing admin password"):
        client.predict("", api_name="/rate_results")
    overview, pairs, scores, annotators, emotions = client.predict(app_server.admin_password, api_name="/rate_results")
    assert "ratings" in overview and pairs["data"] and scores["data"] and emotions["data"] and annotators["data"]
    csv_text = Path(client.predict(app_server.admin_password, api_name="/rate_export")).read_text()
    assert csv_text.count("api_annotator") == 3
    jsonl = Path(client.predict(app_server.admin_password, api_name="/rate_export_jsonl")).read_text().splitlines()
    assert len(jsonl) == 3 and all(json.loads(line)["time_spent_s"] >= 0 for line in jsonl)
    with pytest.raises(AppError, match="wrong or missing admin password"):
        client.predict("guess", api_name="/rate_export")


def test_rating_refuses_bad_annotator_ids_and_foreign_submits(app_server):
    client = new_client(app_server)
    with pytest.raises(AppError, match="annotator id must match"):
        client.predict("<script>alert(1)</script>", api_name="/rate_next")
    with pytest.raises(AppError, match="No item is open"):
        client.predict("A", 3, 3, 3, 3, "", api_name="/rate_submit")


def test_push_to_hub_without_a_token_says_so(app_server, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(AppError, match="HF_TOKEN"):
        new_client(app_server).predict(app_server.admin_password, "someone/ratings", api_name="/rate_push")


def test_markdown_text_renders_user_text_inert():
    from ui.backend import markdown_text

    text = markdown_text('<img src=x onerror="alert(1)"> **bold** [link](javascript:x)')
    assert "<" not in text and ">" not in text and "**" not in text and "](" not in text


def test_exports_are_off_without_an_admin_password(tmp_path, monkeypatch):
    from ui.backend import AppSettings, Backend
    from ui.rate import export_csv, push

    monkeypatch.delenv("SEMOLLAMA_ADMIN_PASSWORD", raising=False)
    backend = Backend(lambda: None, AppSettings(ratings_url=f"sqlite:///{tmp_path / 'r.sqlite'}"))
    for call in (lambda: export_csv(backend, ""), lambda: push(backend, "", "someone/ratings")):
        with pytest.raises(ValueError, match="set SEMOLLAMA_ADMIN_PASSWORD"):
            call()
