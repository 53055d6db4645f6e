"""Reliability and security (issue 6), bad audio and uploads: sample types, rates, channel
counts, clipping, NaN and infinite samples, over-long clips, bad clips through the app's Talk
tab, oversized uploads, bad manifests and unsafe zips through Evaluate, a million-row manifest.

Split from test_reliability.py (see also test_reliability_app.py and
test_reliability_startup.py). The distinct bad inputs tried are counted in
reliability_support and reported at the end of the test session.
"""
from __future__ import annotations

import json
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from semollama_core.model.audio import AudioError, load_audio

from reliability_support import (clip_bytes, one_line_error, reference, tone,
                                 tried)

pytest_plugins = ["conftest_app"]
# The distinct bad inputs tried, counted across the reliability tests, printed at the end of the session.
pytestmark = pytest.mark.usefixtures("report_bad_input_count")


# ============================================================================= Audio
SAMPLE_TYPES = {  # numpy dtype, file format and subtype that stores it
    "int8": (np.int8, "FLAC", "PCM_S8", ".flac"),
    "int16": (np.int16, "WAV", "PCM_16", ".wav"),
    "int32": (np.int32, "WAV", "PCM_32", ".wav"),
    "float64": (np.float64, "WAV", "DOUBLE", ".wav"),
}


def as_dtype(samples: np.ndarray, dtype) -> np.ndarray:
    if np.dtype(dtype).kind == "f":
        return samples.astype(dtype)
    return np.round(samples * (np.iinfo(dtype).max)).astype(dtype)


@pytest.mark.parametrize("name", list(SAMPLE_TYPES))
def test_audio_sample_type_data_loads(name, tmp_path):
    """int8 / int16 / int32 / float64 data, as an array (Gradio's numpy) and as a file."""
    dtype, file_format, subtype, suffix = SAMPLE_TYPES[name]
    samples = as_dtype(tone(16000), dtype)
    expected = reference()
    from_array = load_audio((16000, samples))
    path = tmp_path / f"clip{suffix}"
    # soundfile takes no int8 arrays: the 8-bit file is written from the same values as floats.
    stored = samples / 128.0 if name == "int8" else samples
    sf.write(path, stored, 16000, format=file_format, subtype=subtype)
    from_file = load_audio(path)
    tolerance = 2.0 / 128 if name == "int8" else 1e-3
    for audio in (from_array, from_file):
        assert audio.dtype == np.float32 and audio.shape == expected.shape
        assert np.max(np.abs(audio - expected)) < tolerance
    tried("handled", f"audio:{name}-array", f"audio:{name}-file")


@pytest.mark.parametrize("rate", [8000, 44100, 96000])
def test_audio_unusual_sample_rate_file_loads(rate, tmp_path):
    path = tmp_path / f"clip_{rate}.wav"
    sf.write(path, tone(rate), rate, subtype="PCM_16")
    audio = load_audio(path)
    assert abs(len(audio) - 16000) <= 2
    # The 220 Hz tone survives resampling: its spectrum peaks at 220 Hz.
    assert abs(np.argmax(np.abs(np.fft.rfft(audio))) * 16000 / len(audio) - 220) < 3
    tried("handled", f"audio:rate-{rate}")


@pytest.mark.parametrize("channels", range(1, 9))
def test_audio_one_to_eight_channels_load_as_their_mono_mix(channels, tmp_path):
    path = tmp_path / f"clip_{channels}ch.wav"
    sf.write(path, tone(16000, channels=channels), 16000, subtype="FLOAT")
    audio = load_audio(path)
    assert np.max(np.abs(audio - reference(channels=channels))) < 1e-4
    tried("handled", f"audio:{channels}-channels")


def test_audio_clipping_is_bounded_not_refused(tmp_path):
    hot = tmp_path / "hot.wav"
    sf.write(hot, 4.0 * tone(16000), 16000, subtype="FLOAT")  # float WAV may exceed full scale
    square = tmp_path / "square.wav"
    sf.write(square, np.sign(tone(16000)) * 0.999, 16000, subtype="PCM_16")  # clipped at full scale
    for path in (hot, square):
        audio = load_audio(path)
        assert np.isfinite(audio).all() and np.max(np.abs(audio)) <= 1.0
    tried("handled", "audio:over-full-scale-float", "audio:clipped-square")


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_audio_nan_and_inf_samples_refused(bad, tmp_path):
    samples = tone(16000).astype(np.float32)
    samples[100:110] = float(bad)
    path = tmp_path / f"{bad}.wav"
    sf.write(path, samples, 16000, subtype="FLOAT")
    for source in (path, (16000, samples)):
        with pytest.raises(AudioError, match="NaN or infinite") as caught:
            load_audio(source)
        one_line_error(caught)
    tried("refused", f"audio:{bad}-file", f"audio:{bad}-array")


def test_audio_longer_than_the_maximum_names_the_limit_before_decoding(tmp_path):
    long_clip = tmp_path / "long.wav"
    sf.write(long_clip, np.full(8000 * 12, 64, np.int16), 8000, subtype="PCM_16")
    with pytest.raises(AudioError, match=r"12\.0 s long; the maximum is 10 s") as caught:
        load_audio(long_clip, max_duration_s=10)
    assert "max_audio_s" in one_line_error(caught)  # says how to raise the limit
    default_limit = tmp_path / "200s.wav"
    sf.write(default_limit, np.full(8000 * 200, 64, np.int16), 8000, subtype="PCM_16")
    with pytest.raises(AudioError, match=r"200\.0 s long; the maximum is 180 s"):
        load_audio(default_limit)
    # A header that promises three hours over a few bytes is read for what is really there.
    lying = tmp_path / "lying_header.wav"
    lying.write_bytes(_wav_header(8000, frames=8000 * 3600 * 3) + b"\x00\x01" * 1000)
    with pytest.raises(AudioError, match="ms long; at least") as caught:
        load_audio(lying)
    one_line_error(caught)
    tried("refused", "audio:longer-than-maximum", "audio:header-claims-3-hours")


def _wav_header(rate: int, frames: int) -> bytes:
    data_bytes = frames * 2
    return (b"RIFF" + (36 + data_bytes).to_bytes(4, "little") + b"WAVEfmt " + (16).to_bytes(4, "little")
            + (1).to_bytes(2, "little") + (1).to_bytes(2, "little") + rate.to_bytes(4, "little")
            + (rate * 2).to_bytes(4, "little") + (2).to_bytes(2, "little") + (16).to_bytes(2, "little")
            + b"data" + data_bytes.to_bytes(4, "little"))


def bad_audio_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """Bad clips as a user could upload them, each with the message it must produce."""
    good = folder / "good.wav"
    sf.write(good, tone(16000), 16000, subtype="PCM_16")
    cases = {
        "empty_file": (b"", "empty|0 bytes"),
        "all_zero": (("zeros", np.zeros(16000, np.int16)), "silent"),
        "50ms": (("tone", tone(16000, 0.05)), "50 ms long; at least"),
        "corrupt_header": (good.read_bytes()[:12] + b"\xff" * 40 + good.read_bytes()[52:], "not a readable audio file"),
        "truncated_header": (good.read_bytes()[:30], "not a readable audio file"),
        "png_named_wav": (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8, "not a readable audio file"),
        "text_named_wav": (b"RIFF? no, just some text pretending to be audio\n" * 20, "not a readable audio file"),
        "nan_samples": (("float", np.full(16000, np.nan, np.float32)), "NaN or infinite"),
        "inf_samples": (("float", np.full(16000, np.inf, np.float32)), "NaN or infinite"),
        # 181 s of 8-bit 8 kHz audio is 1.4 MB: under the upload limit, over the duration limit.
        "181s": (("long", np.full(8000 * 181, 0.01, np.float32)), r"181\.0 s long; the maximum is 180 s"),
    }
    files = {}
    for name, (content, message) in cases.items():
        path = folder / f"{name}.wav"
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content[0] == "long":
            sf.write(path, content[1], 8000, subtype="PCM_U8")
        elif content[0] == "float":
            sf.write(path, content[1], 16000, subtype="FLOAT")
        else:
            sf.write(path, content[1], 16000, subtype="PCM_16")
        files[name] = (path, message)
    return files


def test_talk_refuses_bad_audio_with_one_clear_line_and_stays_up(app_server, tmp_path):
    client = Client(app_server.url, verbose=False)
    for name, (path, message) in bad_audio_files(tmp_path).items():
        with pytest.raises(AppError, match=message) as caught:
            client.predict(handle_file(str(path)), 2, 0.0, "", api_name="/talk")
        one_line_error(caught)
        tried("refused", f"audio:{name}-via-app")
    # Still up and serving after every refusal.
    audio, info = client.predict("sad_1.wav", api_name="/load_example")
    assert Path(audio).is_file() and "sad" in info


def test_upload_bounded_in_size_before_decoding(app_server, tmp_path):
    """Over the upload limit, a zip (or anything) is refused by the server before any handler runs."""
    big = tmp_path / "big.zip"
    with zipfile.ZipFile(big, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("noise.wav", np.random.default_rng(0).bytes(app_server.max_upload_mb * 2**20 + 4096))
    manifest = tmp_path / "set.jsonl"
    manifest.write_text('{"audio": "noise.wav", "emotion": "sad"}\n')
    with pytest.raises(Exception, match="(?i)size|large|413"):
        Client(app_server.url, verbose=False).predict("upload", handle_file(str(manifest)), handle_file(str(big)),
                                                      ["speech_llm"], 10, api_name="/evaluate")
    tried("refused", "upload:over-size-limit")


# ============================================================================= Manifests
def symlink_entry(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.external_attr = (0o120777 << 16)
    return info, target.encode()


def jsonl(*rows: dict) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


GOOD_ROWS = ({"audio": "happy_1.wav", "emotion": "happy"}, {"audio": "sad_1.wav", "emotion": "sad"})
MANIFEST_CASES = {  # name: (manifest file name, manifest bytes, extra zip entries, message)
    "missing_audio_column": ("set.csv", b"path,emotion\nhappy_1.wav,happy\n", {}, "no 'audio' column"),
    "missing_emotion": ("set.jsonl", jsonl({"audio": "happy_1.wav"}, {"audio": "sad_1.wav"}), {},
                        "missing 'emotion'"),
    "unknown_labels": ("set.jsonl", jsonl({"audio": "happy_1.wav", "emotion": "bored"},
                                          {"audio": "sad_1.wav", "emotion": "sleepy"}), {}, "fewer than two"),
    "audio_not_in_zip": ("set.jsonl", jsonl(*GOOD_ROWS, {"audio": "gone.wav", "emotion": "sad"}), {},
                         "not found: gone.wav"),
    "parent_path": ("set.jsonl", jsonl({"audio": "../happy_1.wav", "emotion": "happy"}), {},
                    "leaves the manifest's folder"),
    "absolute_path": ("set.jsonl", jsonl({"audio": "/etc/passwd", "emotion": "happy"}), {}, "absolute audio path"),
    "duplicate_rows": ("set.jsonl", jsonl(*GOOD_ROWS, GOOD_ROWS[0]), {}, "duplicate audio path happy_1.wav"),
    "non_utf8": ("set.csv", b"audio,emotion,transcript\nhappy_1.wav,happy,caf\xe9\n", {}, "not UTF-8"),
    "empty_manifest": ("set.jsonl", b"", {}, "empty"),
    "json_array": ("set.jsonl", json.dumps(list(GOOD_ROWS)).encode(), {}, "JSON array"),
    "hostile_path": ("set.jsonl", jsonl({"audio": "<img src=x onerror=alert(1)>.wav", "emotion": "sad"}), {},
                     "not in the uploaded archive"),
    "zip_slip_parent": ("set.jsonl", jsonl(*GOOD_ROWS), {"../escaped.txt": b"x"}, "zip slip"),
    "zip_slip_nested": ("set.jsonl", jsonl(*GOOD_ROWS), {"clips/../../escaped.txt": b"x"}, "zip slip"),
    "zip_absolute_entry": ("set.jsonl", jsonl(*GOOD_ROWS), {"/tmp/semollama-escaped.txt": b"x"}, "absolute path"),
    "zip_symlink": ("set.jsonl", jsonl(*GOOD_ROWS), {"link.wav": "symlink:/etc/passwd"}, "symbolic link"),
    "not_a_zip": ("set.jsonl", jsonl(*GOOD_ROWS), None, "not a readable zip archive"),
}


def upload_files(app_server, folder: Path, manifest_name: str, manifest: bytes, extra: dict | None):
    manifest_path = folder / manifest_name
    manifest_path.write_bytes(manifest)
    archive = folder / "audio.zip"
    if extra is None:
        archive.write_bytes(b"PK? this is a text file with a zip name\n" * 10)
        return manifest_path, archive
    with zipfile.ZipFile(archive, "w") as z:
        for emotion in ("happy", "sad"):
            z.writestr(f"{emotion}_1.wav", clip_bytes(app_server, emotion))
        for name, content in extra.items():
            if isinstance(content, str) and content.startswith("symlink:"):
                z.writestr(*symlink_entry(name, content.removeprefix("symlink:")))
            else:
                z.writestr(zipfile.ZipInfo(name), content)
    return manifest_path, archive


@pytest.mark.parametrize("case", list(MANIFEST_CASES))
def test_manifest_upload_refused_with_a_clear_message(app_server, tmp_path, case):
    """Bad manifests and unsafe zips through the app's Evaluate upload; nothing half-written, nothing escapes."""
    name, manifest, extra, message = MANIFEST_CASES[case]
    manifest_path, archive = upload_files(app_server, tmp_path, name, manifest, extra)
    with pytest.raises(AppError, match=message) as caught:
        Client(app_server.url, verbose=False).predict("upload", handle_file(str(manifest_path)),
                                                      handle_file(str(archive)), ["speech_llm"], 10,
                                                      api_name="/evaluate")
    text = one_line_error(caught)
    assert "<img" not in text  # user text in an error is shown escaped (gr.Error renders HTML)
    scratch = app_server.demo.backend.scratch
    assert not [p for p in scratch.rglob("*") if ".extracting-" in p.name]  # no half-extracted folder
    assert not Path("/tmp/semollama-escaped.txt").exists() and not (scratch / "escaped.txt").exists()
    tried("refused", f"manifest:{case}")


def test_zip_entries_with_bare_permissions_extract(tmp_path):
    """zipfile.writestr (and other tools) store 0o600 without a file type: still plain files."""
    from semollama_core.corpus.archive import safe_extract_zip

    archive = tmp_path / "plain.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("clips/a.wav", b"RIFF")
        assert z.getinfo("clips/a.wav").external_attr >> 16 == 0o600
    assert (safe_extract_zip(archive, tmp_path / "out") / "clips" / "a.wav").read_bytes() == b"RIFF"
    tried("handled", "zip:bare-permission-entries")


def million_row_manifest(path: Path, rows: int = 1_000_000) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for start in range(0, rows, 50_000):
            f.write("".join(f'{{"audio": "clips/{i}.wav", "emotion": "sad"}}\n' for i in range(start, start + 50_000)))
    return path


def test_manifest_million_rows_streamed_not_loaded_whole(app_server, tmp_path):
    from semollama_core.corpus.manifest import iter_manifest

    manifest = million_row_manifest(tmp_path / "million.jsonl")
    assert manifest.stat().st_size > 40 * 2**20
    tracemalloc.start()
    began = time.perf_counter()
    rows = iter_manifest(manifest, check_files=False)
    first = [next(rows) for _ in range(1000)]
    elapsed = time.perf_counter() - began
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    rows.close()
    assert first[0].audio_path.name == "0.wav" and first[-1].audio_path.name == "999.wav"
    assert elapsed < 5 and peak < 8 * 2**20, (elapsed, peak)  # a 45 MB file, read a line at a time
    # Through the app the same file is over the upload limit: refused before it is read.
    archive = tmp_path / "audio.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("clips/0.wav", clip_bytes(app_server, "sad"))
    with pytest.raises(Exception, match="(?i)size|large|413"):
        Client(app_server.url, verbose=False).predict("upload", handle_file(str(manifest)), handle_file(str(archive)),
                                                      ["speech_llm"], 10, api_name="/evaluate")
    tried("refused", "manifest:million-rows-upload")
    tried("handled", "manifest:million-rows-streamed")
