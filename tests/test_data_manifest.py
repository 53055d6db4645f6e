"""Manifests (reading, writing, bad rows, streaming a million rows) and safe zip extraction of
uploaded corpora, on small corpora built here.

Split from test_data.py (see also test_data_adapters.py for the corpus adapters); shared
helpers are in data_support.py.
"""

import subprocess
import sys
import warnings
import zipfile

import pytest

from semollama_core.corpus.archive import ArchiveError, load_uploaded_manifest, safe_extract_zip
from semollama_core.corpus.manifest import (ManifestError, ManifestWarning, Utterance, iter_manifest, manifest_labels,
    read_manifest, write_manifest)

from data_support import REPO, wav_bytes, write_lines, write_wav


@pytest.fixture
def corpus(tmp_path):
    """A folder with three short clips: a.wav, b.wav and sub/c.wav."""
    for name in ("clips/a.wav", "clips/b.wav", "clips/sub/c.wav"):
        write_wav(tmp_path / name)
    return tmp_path


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
