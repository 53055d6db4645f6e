"""Manifests, corpus adapters and safe zip extraction, on small corpora built here."""

import io
import os
import subprocess
import sys
import textwrap
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from semollama_core.corpus.archive import ArchiveError, load_uploaded_manifest, safe_extract_zip
from semollama_core.corpus.manifest import (ManifestError, ManifestWarning, Utterance, iter_manifest, manifest_labels,
    read_manifest, write_manifest)
from semollama_core.corpus.converters import cremad_manifest, hf_dataset_manifest, iemocap_manifest, ravdess_manifest

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


@pytest.fixture
def corpus(tmp_path):
    """A folder with three short clips: a.wav, b.wav and sub/c.wav."""
    for name in ("clips/a.wav", "clips/b.wav", "clips/sub/c.wav"):
        write_wav(tmp_path / name)
    return tmp_path


def write_lines(path, *lines):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# ---------------------------------------------------------------- reading and writing


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_write_then_read_keeps_every_field(corpus, suffix):
    rows = [
        Utterance(corpus / "clips/a.wav", "sad", "They changed the schedule.", "s1", "test", {"gender": "female"}),
        {"audio": "clips/sub/c.wav", "emotion": "happy", "speaker": "s2", "snr_db": "12"},
    ]
    manifest = write_manifest(corpus / f"manifest{suffix}", rows)

    a, c = read_manifest(manifest)
    assert a.audio_path == (corpus / "clips/a.wav").resolve() and a.audio_path.is_absolute()
    assert (a.emotion, a.transcript, a.speaker, a.split) == ("sad", "They changed the schedule.", "s1", "test")
    assert a.extra == {"gender": "female"}
    assert c.audio_path == (corpus / "clips/sub/c.wav").resolve()
    assert (c.emotion, c.transcript, c.split, c.extra) == ("happy", None, None, {"snr_db": "12"})
    first_line = manifest.read_text().splitlines()[1 if suffix == ".csv" else 0]
    assert "clips/a.wav" in first_line and str(corpus) not in first_line  # stored relative


@pytest.mark.parametrize("text", ['{"audio": "clips/a.wav", "emotion": "sad"}\n', "audio,emotion\nclips/a.wav,sad\n"])
def test_unknown_extension_is_sniffed(corpus, text):
    manifest = corpus / "list.txt"
    manifest.write_text(text)
    (utterance,) = read_manifest(manifest)
    assert utterance.emotion == "sad" and utterance.audio_path.name == "a.wav"


def test_integer_speaker_becomes_text_and_bom_is_ignored(corpus):
    manifest = corpus / "m.jsonl"
    manifest.write_bytes(b'\xef\xbb\xbf{"audio": "clips/a.wav", "speaker": 7}\n')
    assert read_manifest(manifest)[0].speaker == "7"


BAD_ROWS = [
    ("invalid JSON", ['{"audio": "clips/a.wav"}', '{"audio": "clips/b.wav",'], {}, 2, "invalid JSON"),
    ("no audio key", ['{"audio": "clips/a.wav"}', '{"emotion": "sad"}'], {}, 2, "missing 'audio'"),
    ("not an object", ['{"audio": "clips/a.wav"}', '["clips/b.wav"]'], {}, 2, "expected a JSON object, got list"),
    ("emotion required", ['{"audio": "clips/a.wav"}'], {"require_emotion": True}, 1, "missing 'emotion'"),
    ("unknown label", ['{"audio": "clips/a.wav", "emotion": "bored"}'], {"labels": ["sad"]}, 1, "'bored' is not one of"),
    ("missing file", ['{"audio": "clips/a.wav"}', '{"audio": "clips/zzz.wav"}'], {}, 2, "not found: clips/zzz.wav"),
    ("parent folder", ['{"audio": "../x.wav"}'], {}, 1, "leaves the manifest's folder"),
    ("hidden parent", ['{"audio": "clips/../../x.wav"}'], {}, 1, "leaves the manifest's folder"),
    ("absolute", ['{"audio": "/etc/passwd"}'], {}, 1, "absolute audio path"),
    ("windows absolute", ['{"audio": "C:\\\\x.wav"}'], {}, 1, "absolute audio path"),
    ("duplicate", ['{"audio": "clips/a.wav"}', '{"audio": "clips/b.wav"}', '{"audio": "./clips/a.wav"}'], {}, 3, "duplicate audio path clips/a.wav"),
    ("emotion not text", ['{"audio": "clips/a.wav", "emotion": 3}'], {}, 1, "'emotion' must be a string"),
]  # fmt: skip


@pytest.mark.parametrize("lines, options, line, message", [b[1:] for b in BAD_ROWS], ids=[b[0] for b in BAD_ROWS])
def test_bad_rows_name_file_and_line(corpus, lines, options, line, message):
    manifest = write_lines(corpus / "m.jsonl", *lines)
    with pytest.raises(ManifestError) as error:
        read_manifest(manifest, **options)
    text = str(error.value)
    assert text.startswith(f"{manifest}:{line}: ") and message in text and "\n" not in text


def test_symlink_leading_outside_is_refused(corpus, tmp_path_factory):
    outside = write_wav(tmp_path_factory.mktemp("elsewhere") / "secret.wav")
    (corpus / "clips/link.wav").symlink_to(outside)
    manifest = write_lines(corpus / "m.jsonl", '{"audio": "clips/a.wav"}', '{"audio": "clips/link.wav"}')
    with pytest.raises(ManifestError, match=r"m\.jsonl:2: audio clips/link\.wav is a link that leads outside"):
        read_manifest(manifest)


def test_non_utf8_bytes_name_their_line(corpus):
    manifest = corpus / "m.csv"
    manifest.write_bytes(b"audio,emotion,transcript\nclips/a.wav,sad,ok\nclips/b.wav,sad,caf\xe9\n")
    with pytest.raises(ManifestError, match=r"m\.csv:3: not UTF-8 text \(byte 0xe9 at column 20\)"):
        read_manifest(manifest)


def test_csv_errors_name_file_and_line(corpus):
    no_audio = write_lines(corpus / "a.csv", "path,emotion", "clips/a.wav,sad")
    with pytest.raises(ManifestError, match=r"a\.csv:1: no 'audio' column \(columns: path, emotion\)"):
        read_manifest(no_audio)
    ragged = write_lines(corpus / "b.csv", "audio,emotion", "clips/a.wav,sad", "", "clips/b.wav,sad,extra")
    with pytest.raises(ManifestError, match=r"b\.csv:4: 3 fields, but the header has 2"):
        read_manifest(ragged)


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("empty.jsonl", "", "manifest is empty"),
        ("blank.jsonl", "\n  \n", "manifest is empty"),
        ("header.csv", "audio,emotion\n", "manifest is empty"),
        ("array.json", '[{"audio": "clips/a.wav"}]', "a JSON array; write one JSON object a line"),
    ],
)
def test_manifest_without_rows_is_an_error(corpus, name, text, message):
    (corpus / name).write_text(text)
    with pytest.raises(ManifestError, match=message):
        read_manifest(corpus / name)


def test_missing_manifest_is_an_error(tmp_path):
    with pytest.raises(ManifestError, match=r"nope\.jsonl: manifest not found"):
        iter_manifest(tmp_path / "nope.jsonl")  # at the call, before any row is asked for


def test_skip_mode_warns_and_keeps_the_good_rows(corpus):
    manifest = write_lines(
        corpus / "m.jsonl",
        '{"audio": "clips/a.wav", "emotion": "sad"}',
        '{"audio": "clips/a.wav", "emotion": "sad"}',
        '{"audio": "../x.wav"}',
        "not json",
        '{"audio": "clips/b.wav", "emotion": "happy"}',
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        utterances = read_manifest(manifest, on_error="skip")
    assert [u.audio_path.name for u in utterances] == ["a.wav", "b.wav"]
    messages = [str(w.message) for w in caught if w.category is ManifestWarning]
    assert any(":2: duplicate audio path" in m for m in messages)
    assert any(":3: " in m and "leaves the manifest's folder" in m for m in messages)
    assert any(":4: invalid JSON" in m for m in messages)  # JSONL lines stand alone


def test_split_filter_and_limit(corpus):
    manifest = write_manifest(
        corpus / "m.jsonl",
        [
            {"audio": "clips/a.wav", "emotion": "sad", "split": "train"},
            {"audio": "clips/b.wav", "emotion": "angry", "split": "test"},
            {"audio": "clips/sub/c.wav", "emotion": "happy", "split": "test"},
        ],
    )
    assert [u.emotion for u in iter_manifest(manifest, split="test")] == ["angry", "happy"]
    assert len(read_manifest(manifest, limit=2)) == 2
    assert manifest_labels(manifest) == ["angry", "happy", "sad"]
    with pytest.raises(ManifestError, match=r"no rows with split 'dev' \(splits present: test, train\)"):
        read_manifest(manifest, split="dev")


def test_write_is_atomic_when_a_row_is_bad(corpus, tmp_path_factory):
    manifest = write_manifest(corpus / "m.jsonl", [{"audio": "clips/a.wav", "emotion": "sad"}])
    before = manifest.read_bytes()
    outside = tmp_path_factory.mktemp("other") / "x.wav"
    rows = [{"audio": "clips/b.wav"}, {"audio": outside}]
    with pytest.raises(ManifestError, match="is outside the manifest's folder"):
        write_manifest(manifest, rows)
    assert manifest.read_bytes() == before
    assert sorted(p.name for p in corpus.iterdir()) == ["clips", "m.jsonl"]  # no temporary file left
    with pytest.raises(ManifestError, match="no rows to write"):
        write_manifest(corpus / "empty.jsonl", [])
    assert not (corpus / "empty.jsonl").exists()


MEMORY_SCRIPT = """
import resource, sys
from semollama_core.corpus.manifest import iter_manifest
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rows = sum(1 for _ in iter_manifest(sys.argv[1], check_files=False))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(rows, (after - before) / 1024)
"""


def test_million_row_manifest_streams_in_small_memory(tmp_path):
    manifest = tmp_path / "big.jsonl"
    with open(manifest, "w") as f:
        f.writelines(f'{{"audio": "clips/{i:07d}.wav", "emotion": "sad"}}\n' for i in range(1_000_000))
    # A fresh interpreter, so ru_maxrss measures this read alone. Holding the rows would
    # take several hundred MB; streaming needs the duplicate table (16 bytes a row).
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(manifest)], cwd=REPO, capture_output=True, text=True, check=True
    )
    rows, grown_mb = result.stdout.split()
    assert int(rows) == 1_000_000
    assert float(grown_mb) < 48


# ---------------------------------------------------------------- corpus adapters


def test_ravdess_names_become_labels_statements_and_actors(tmp_path):
    root = tmp_path / "ravdess"
    write_wav(root / "Actor_12/03-01-05-01-02-01-12.wav")
    write_wav(root / "Actor_01/03-01-02-02-01-02-01.wav")
    write_wav(root / "Actor_01/03-02-08-01-01-01-01.wav")
    write_wav(root / "Actor_01/readme-not-a-clip.wav")
    with pytest.warns(ManifestWarning, match="1 files do not follow RAVDESS naming"):
        manifest = ravdess_manifest(root, root / "ravdess.jsonl")
    rows = {u.audio_path.name: u for u in read_manifest(manifest, require_emotion=True)}
    angry = rows["03-01-05-01-02-01-12.wav"]
    assert (angry.emotion, angry.transcript, angry.speaker) == ("angry", "Dogs are sitting by the door", "ravdess_12")
    assert angry.extra["gender"] == "female" and angry.extra["intensity"] == "normal"
    calm = rows["03-01-02-02-01-02-01.wav"]
    assert (calm.emotion, calm.transcript, calm.extra["gender"], calm.extra["intensity"], calm.extra["repetition"]) == (
        "calm", "Kids are talking by the door", "male", "strong", 2,
    )  # fmt: skip
    assert rows["03-02-08-01-01-01-01.wav"].emotion == "surprised"
    assert rows["03-02-08-01-01-01-01.wav"].extra["vocal_channel"] == "song"


def test_adapter_refuses_a_manifest_outside_the_corpus(tmp_path):
    root = tmp_path / "ravdess"
    write_wav(root / "03-01-05-01-02-01-12.wav")
    with pytest.raises(ManifestError, match="outside the manifest's folder"):
        ravdess_manifest(root, tmp_path / "elsewhere" / "m.jsonl")
    assert not (tmp_path / "elsewhere" / "m.jsonl").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ManifestError, match="no RAVDESS audio files found"):
        ravdess_manifest(empty, empty / "m.jsonl")


def test_cremad_names_and_demographics(tmp_path):
    root = tmp_path / "CREMA-D"
    write_wav(root / "AudioWAV/1001_DFA_ANG_XX.wav")
    write_wav(root / "AudioWAV/1002_IEO_HAP_HI.wav")
    write_wav(root / "AudioWAV/1002_TSI_SAD_LO.wav")
    (root / "VideoDemographics.csv").write_text("ActorID,Age,Sex,Race,Ethnicity\n1001,51,Male,Caucasian,Not Hispanic\n")
    manifest = cremad_manifest(root, tmp_path / "cremad.csv")
    rows = {u.audio_path.name: u for u in read_manifest(manifest)}
    angry = rows["1001_DFA_ANG_XX.wav"]
    assert (angry.emotion, angry.transcript, angry.speaker) == ("angry", "Don't forget a jacket", "cremad_1001")
    assert angry.extra["gender"] == "male" and angry.extra["intensity"] == "unspecified"
    happy = rows["1002_IEO_HAP_HI.wav"]
    assert (happy.emotion, happy.transcript, happy.extra["intensity"]) == ("happy", "It's eleven o'clock", "high")
    assert "gender" not in happy.extra  # actor 1002 is not in the demographics table
    assert rows["1002_TSI_SAD_LO.wav"].transcript == "The surface is slick"


def make_iemocap(root):
    """Two sessions, one dialog each, with label and transcription files in the release's format."""
    utterances = {
        1: [("Ses01F_impro01_F000", "neu", "Excuse me."), ("Ses01F_impro01_M000", "exc", "Do you have your forms?"),
            ("Ses01F_impro01_F001", "fru", "Yeah."), ("Ses01F_impro01_M001", "xxx", "Let me see them.")],
        5: [("Ses05M_script01_1_F000", "sad", "I miss him."), ("Ses05M_script01_1_M000", "ang", "Stop it.")],
    }  # fmt: skip
    for session, rows in utterances.items():
        folder = root / f"Session{session}"
        dialog = rows[0][0].rsplit("_", 1)[0]
        labels = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
        transcript = []
        for i, (name, label, text) in enumerate(rows):
            start, end = 6.2901 + 3 * i, 8.2357 + 3 * i
            labels += [f"[{start:.4f} - {end:.4f}]\t{name}\t{label}\t[2.5000, 3.0000, 3.5000]", "C-E1:\tNeutral;\t()"]
            transcript.append(f"{name} [{start:08.4f}-{end:08.4f}]: {text}")
            write_wav(folder / "sentences/wav" / dialog / f"{name}.wav")
        write_lines(folder / "dialog/EmoEvaluation" / f"{dialog}.txt", *labels)
        write_lines(folder / "dialog/transcriptions" / f"{dialog}.txt", *transcript)


def test_iemocap_four_class_convention(tmp_path):
    root = tmp_path / "IEMOCAP_full_release"
    make_iemocap(root)
    manifest = iemocap_manifest(root, root / "iemocap.jsonl")
    rows = {u.audio_path.stem: u for u in read_manifest(manifest)}
    assert sorted(rows) == ["Ses01F_impro01_F000", "Ses01F_impro01_M000", "Ses05M_script01_1_F000", "Ses05M_script01_1_M000"]
    neutral, excited = rows["Ses01F_impro01_F000"], rows["Ses01F_impro01_M000"]
    assert (neutral.emotion, neutral.transcript, neutral.speaker, neutral.split) == ("neutral", "Excuse me.", "Ses01F", "train")
    assert (excited.emotion, excited.speaker, excited.extra["iemocap_label"]) == ("happy", "Ses01M", "exc")
    assert excited.extra["valence_activation_dominance"] == [2.5, 3.0, 3.5]
    sad = rows["Ses05M_script01_1_F000"]
    assert (sad.emotion, sad.transcript, sad.speaker, sad.split) == ("sad", "I miss him.", "Ses05F", "test")
    assert manifest_labels(manifest) == ["angry", "happy", "neutral", "sad"]


def test_iemocap_all_classes_keeps_frustrated_and_drops_no_agreement(tmp_path):
    root = tmp_path / "iemocap"
    make_iemocap(root)
    manifest = iemocap_manifest(root, root / "all.jsonl", four_class=False)
    assert manifest_labels(manifest) == ["angry", "excited", "frustrated", "neutral", "sad"]
    assert len(read_manifest(manifest)) == 5


def hf_emotion_dataset(datasets):
    """An in-memory Dataset with an Audio column (encoded wav bytes) and a ClassLabel."""
    features = datasets.Features({
        "audio": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
        "label": datasets.ClassLabel(names=["neutral", "sad", "exc"]),
        "text": datasets.Value("string"),
        "client": datasets.Value("int64"),
    })  # fmt: skip
    table = {
        "audio": [{"bytes": wav_bytes(220.0), "path": None}, {"bytes": wav_bytes(330.0), "path": None},
                  {"bytes": wav_bytes(440.0), "path": None}],
        "label": [1, 2, 0],
        "text": ["I miss him.", "Great news!", "Fine."],
        "client": [7, 8, 7],
    }  # fmt: skip
    # Building the Audio column from arrays needs torchcodec; from wav bytes it does not.
    return datasets.Dataset.from_dict(table, features=features).cast_column("audio", datasets.Audio())


def test_hf_dataset_with_audio_column_and_class_labels(tmp_path):
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "hf" / "manifest.jsonl"
    manifest = hf_dataset_manifest(
        hf_emotion_dataset(datasets), out, label_column="label", text_column="text", speaker_column="client",
        label_map={"exc": "happy"},
    )  # fmt: skip
    utterances = read_manifest(manifest, require_emotion=True)
    assert [u.emotion for u in utterances] == ["sad", "happy", "neutral"]
    assert [u.transcript for u in utterances] == ["I miss him.", "Great news!", "Fine."]
    assert [u.speaker for u in utterances] == ["7", "8", "7"]
    assert all(u.audio_path.parent == tmp_path / "hf" / "clips" for u in utterances)
    samples, rate = sf.read(utterances[0].audio_path)
    assert rate == SAMPLE_RATE and np.allclose(samples, tone(hz=220.0), atol=1e-3)


def test_hf_saved_dataset_dict_gives_splits_and_label_map_drops(tmp_path):
    datasets = pytest.importorskip("datasets")
    dataset = hf_emotion_dataset(datasets)
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": dataset.select([0, 1]), "test": dataset.select([2])}).save_to_disk(str(saved))
    manifest = hf_dataset_manifest(saved, tmp_path / "out/m.csv", label_column="label", label_map={"exc": None})
    utterances = read_manifest(manifest)
    assert [(u.emotion, u.split, u.audio_path.name) for u in utterances] == [
        ("sad", "train", "train_000000.wav"), ("neutral", "test", "test_000000.wav"),
    ]  # fmt: skip


def test_hf_plain_array_column(tmp_path):
    datasets = pytest.importorskip("datasets")
    dataset = datasets.Dataset.from_dict({
        "speech": [{"array": tone(hz=300.0), "sampling_rate": SAMPLE_RATE}],
        "emotion": ["angry"],
        "part": ["dev"],
    })  # fmt: skip
    manifest = hf_dataset_manifest(dataset, tmp_path / "m.jsonl", audio_column="speech", split_column="part")
    (utterance,) = read_manifest(manifest)
    assert (utterance.emotion, utterance.split) == ("angry", "dev")
    assert np.allclose(sf.read(utterance.audio_path)[0], tone(hz=300.0), atol=1e-3)


def test_hf_errors_are_one_line(tmp_path):
    datasets = pytest.importorskip("datasets")
    with pytest.raises(ManifestError, match=r"dataset has no column 'mood' \(columns: audio, label, text, client\)"):
        hf_dataset_manifest(hf_emotion_dataset(datasets), tmp_path / "m.jsonl", label_column="mood")
    with pytest.raises(ManifestError, match="no such dataset folder .pass allow_hub=True"):
        hf_dataset_manifest("someone/emotions", tmp_path / "m.jsonl")


def test_hf_hub_name_offline_fails_with_one_line(tmp_path):
    pytest.importorskip("datasets")
    script = textwrap.dedent(f"""
        from semollama_core.corpus.converters import hf_dataset_manifest
        hf_dataset_manifest("someone/no-such-emotions", {str(tmp_path / "m.jsonl")!r}, allow_hub=True)
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("semollama_core.corpus.manifest.ManifestError: someone/no-such-emotions: could not load from the Hugging Face Hub")


# ---------------------------------------------------------------- zip archives


def make_zip(path, entries):
    """entries: name -> bytes, or name -> (bytes, unix mode) for links and special files."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in entries.items():
            data, mode = content if isinstance(content, tuple) else (content, 0o100644)
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return path


def test_safe_extract_writes_every_file(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"clips/a.wav": wav_bytes(), "clips/b.wav": wav_bytes(), "__MACOSX/._a": b"x"})
    dest = safe_extract_zip(archive, tmp_path / "out", max_total_bytes=10**6, max_files=10)
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*.wav")) == ["clips/a.wav", "clips/b.wav"]
    assert not (dest / "__MACOSX").exists()


UNSAFE_ZIPS = [
    ("zip slip", {"ok.wav": b"1", "../evil.wav": b"2"}, "leads outside the archive folder"),
    ("deep zip slip", {"clips/../../evil.wav": b"2"}, "leads outside the archive folder"),
    ("absolute", {"/tmp/evil.wav": b"2"}, "has an absolute path"),
    ("windows absolute", {"C:\\evil.wav": b"2"}, "has an absolute path"),
    ("backslash slip", {"..\\evil.wav": b"2"}, "leads outside the archive folder"),
    ("symlink", {"clips/link.wav": (b"/etc/passwd", 0o120777)}, "is a symbolic link"),
    ("device", {"dev": (b"", 0o020644)}, "not a plain file or folder"),
]


@pytest.mark.parametrize("entries, message", [u[1:] for u in UNSAFE_ZIPS], ids=[u[0] for u in UNSAFE_ZIPS])
def test_unsafe_entries_are_refused_and_nothing_is_written(tmp_path, entries, message):
    archive = make_zip(tmp_path / "bad.zip", entries)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(ArchiveError, match=message) as error:
        safe_extract_zip(archive, work / "out", max_total_bytes=10**6, max_files=10)
    assert str(error.value).startswith(str(archive)) and "\n" not in str(error.value)
    assert list(work.iterdir()) == [] and not (tmp_path / "evil.wav").exists()


def test_too_many_entries_are_refused(tmp_path):
    archive = make_zip(tmp_path / "many.zip", {f"{i}.wav": b"x" for i in range(11)})
    with pytest.raises(ArchiveError, match="11 entries, more than the limit of 10"):
        safe_extract_zip(archive, tmp_path / "out", max_total_bytes=10**6, max_files=10)


def test_zip_bomb_by_declared_size_is_refused(tmp_path):
    archive = make_zip(tmp_path / "bomb.zip", {"zeros.bin": bytes(5_000_000)})
    assert archive.stat().st_size < 20_000  # it compresses a thousandfold
    with pytest.raises(ArchiveError, match="would inflate to 5000000 bytes, more than the limit of 1000000"):
        safe_extract_zip(archive, tmp_path / "out", max_total_bytes=1_000_000, max_files=10)
    assert not (tmp_path / "out").exists()


def test_zip_lying_about_its_size_is_refused(tmp_path):
    archive = make_zip(tmp_path / "liar.zip", {"zeros.bin": bytes(2_000_000)})
    # Rewrite the central directory's uncompressed size (offset 24 in its record) to 100 bytes.
    data = bytearray(archive.read_bytes())
    record = data.rfind(b"PK\x01\x02")
    data[record + 24 : record + 28] = (100).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match="cannot be extracted"):
        safe_extract_zip(archive, tmp_path / "out", max_total_bytes=1_000_000, max_files=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["liar.zip"]  # staging folder removed


def test_clashing_entries_are_refused(tmp_path):
    clash = make_zip(tmp_path / "clash.zip", {"a": b"1", "a/b.wav": b"2"})
    with pytest.raises(ArchiveError, match="entry 'a/b.wav' cannot be extracted"):
        safe_extract_zip(clash, tmp_path / "out")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name it is asked to write
        twice = make_zip(tmp_path / "twice.zip", {"a.wav": b"1", "./a.wav": b"2"})
    with pytest.raises(ArchiveError, match="entry './a.wav' appears twice"):
        safe_extract_zip(twice, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clash.zip", "twice.zip"]


def test_not_a_zip_and_existing_destination(tmp_path):
    fake = tmp_path / "fake.zip"
    fake.write_bytes(b"not a zip")
    with pytest.raises(ArchiveError, match="not a readable zip archive"):
        safe_extract_zip(fake, tmp_path / "out")
    archive = make_zip(tmp_path / "a.zip", {"a.wav": b"1"})
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ArchiveError, match="already exists and is not an empty folder"):
        safe_extract_zip(archive, tmp_path / "full")


def test_uploaded_manifest_finds_its_audio_one_folder_down(tmp_path):
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    manifest = write_lines(uploads / "eval.jsonl", '{"audio": "clips/a.wav", "emotion": "sad"}', '{"audio": "clips/b.wav", "emotion": "happy"}')
    archive = make_zip(uploads / "audio.zip", {"corpus/clips/a.wav": wav_bytes(), "corpus/clips/b.wav": wav_bytes()})
    placed = load_uploaded_manifest(str(manifest), archive, tmp_path / "work")
    utterances = read_manifest(placed)
    assert [u.emotion for u in utterances] == ["sad", "happy"]
    assert all(u.audio_path.is_file() and (tmp_path / "work") in u.audio_path.parents for u in utterances)


def test_uploaded_zip_may_carry_its_own_manifest(tmp_path):
    archive = make_zip(tmp_path / "all.zip", {"set/m.csv": b"audio,emotion\nclips/a.wav,angry\n", "set/clips/a.wav": wav_bytes()})
    placed = load_uploaded_manifest(None, archive, tmp_path / "work")
    assert read_manifest(placed)[0].emotion == "angry"


def test_uploaded_manifest_with_audio_missing_from_zip(tmp_path):
    manifest = write_lines(tmp_path / "m.jsonl", '{"audio": "clips/a.wav"}', '{"audio": "clips/b.wav"}')
    archive = make_zip(tmp_path / "audio.zip", {"clips/a.wav": wav_bytes()})
    with pytest.raises(ManifestError, match=r"manifest\.jsonl:2: audio file not found: clips/b\.wav"):
        load_uploaded_manifest(manifest, archive, tmp_path / "work")
    other = make_zip(tmp_path / "other.zip", {"x/y.wav": wav_bytes()})
    with pytest.raises(ManifestError, match=r"first audio file clips/a\.wav is not in the uploaded archive"):
        load_uploaded_manifest(manifest, other, tmp_path / "work")
