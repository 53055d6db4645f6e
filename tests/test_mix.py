"""`mix`: corpora joined into one training manifest, real speech split by speaker from one or
more speaker-splits files, clips hard-linked, and only real training clips augmented."""
import json

import numpy as np
import soundfile as sf

from semollama_core.__main__ import main as cli
from semollama_core.corpus.mix import REAL_SPLITS, join_speaker_splits, load_speaker_splits


def _corpus(folder, rows):
    (folder / "clips").mkdir(parents=True)
    t = np.arange(16000) / 16000
    for i, row in enumerate(rows):
        audio = 0.3 * np.sin(2 * np.pi * (120 + 15 * i) * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
        sf.write(folder / row["audio"], audio.astype(np.float32), 16000)
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "manifest.jsonl"


def _splits(path, splits):
    path.write_text(json.dumps({"splits": splits}))
    return str(path)


def test_two_speaker_split_files_place_every_real_speaker_and_augment_only_real_training_clips(tmp_path):
    synthetic = _corpus(tmp_path / "synth", [
        {"audio": f"clips/s{i}.wav", "emotion": e, "transcript": "hello there", "speaker": "espeak:a",
         "split": split, "engine": "espeak-ng"}
        for i, (e, split) in enumerate([("happy", "train"), ("sad", "dev")])])
    real = _corpus(tmp_path / "real", [
        {"audio": f"clips/r{i}.wav", "emotion": e, "transcript": "tak", "speaker": speaker}
        for i, (e, speaker) in enumerate([("angry", "pl:m1"), ("neutral", "pl:m1"), ("angry", "pl:m2"),
                                          ("fearful", "pl:m1"), ("angry", "pl:m9")])])
    first = _splits(tmp_path / "a.json", {"pl:m1": "train"})
    second = _splits(tmp_path / "b.json", {"pl:m2": "test"})
    out = tmp_path / "mix"
    assert cli(["mix", "--out", str(out), str(synthetic), str(real), "--speaker-splits", first,
                "--speaker-splits", second, "--augment", "1"]) == 0
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    placed = {(r["speaker"], r["emotion"], r["split"], r.get("augmented", 0)) for r in rows}
    assert placed == {("espeak:a", "happy", "train", 0), ("espeak:a", "sad", "dev", 0),
                      ("pl:m1", "angry", "train", 0), ("pl:m1", "neutral", "train", 0),
                      ("pl:m1", "angry", "train", 1), ("pl:m1", "neutral", "train", 1),  # augmented: real train only
                      ("pl:m2", "angry", "test", 0)}  # fearful is not a core label; pl:m9 has no split
    original = next(r for r in rows if r["speaker"] == "pl:m2")
    assert (out / original["audio"]).stat().st_ino == (tmp_path / "real" / "clips" / "r2.wav").stat().st_ino


def test_a_speaker_two_files_place_differently_is_a_one_line_error(tmp_path, capsys):
    real = _corpus(tmp_path / "real", [{"audio": "clips/r0.wav", "emotion": "angry", "speaker": "pl:m1"}])
    first = _splits(tmp_path / "a.json", {"pl:m1": "train"})
    second = _splits(tmp_path / "b.json", {"pl:m1": "test"})
    assert cli(["mix", "--out", str(tmp_path / "mix"), str(real), "--speaker-splits", first,
                "--speaker-splits", second]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: Speaker pl:m1 is in split 'train'") and "\n" not in error
    assert not (tmp_path / "mix" / "manifest.jsonl").exists()


def test_the_shipped_real_splits_hold_back_whole_corpora_and_polish_speakers():
    splits = load_speaker_splits(REAL_SPLITS)
    assert {s for s, v in splits.items() if v == "train"} == {"polish:m1", "polish:m2"}
    assert {s for s, v in splits.items() if v == "dev"} == {"polish:m3"}
    assert {"polish:m4", "polish:m5", "crema-d:1001", "crema-d:1002", "emodb:03"} == \
        {s for s, v in splits.items() if v == "test"}
    assert join_speaker_splits([str(REAL_SPLITS), str(REAL_SPLITS)]) == splits


def test_perturb_speaker_copies_are_another_voice_and_the_originals_stay(tmp_path):
    """--perturb-speaker: each augmented copy is the plain channel copy (same channel draw) spoken
    pitch-shifted by its own label-free draw, and named apart; the original rows are untouched."""
    import zlib

    from semollama_core.corpus.mix import PERTURB_PITCH_ST

    real = _corpus(tmp_path / "real", [
        {"audio": f"clips/r{i}.wav", "emotion": e, "transcript": "tak", "speaker": "pl:m1"}
        for i, e in enumerate(["angry", "neutral", "sad"])])
    train = _splits(tmp_path / "a.json", {"pl:m1": "train"})
    made = {}
    for name, extra in (("plain", []), ("perturbed", ["--perturb-speaker"])):
        assert cli(["mix", "--out", str(tmp_path / name), str(real), "--speaker-splits", train,
                    "--augment", "1", *extra]) == 0
        made[name] = [json.loads(line) for line in (tmp_path / name / "manifest.jsonl").read_text().splitlines()]
    copies = [r for r in made["perturbed"] if r.get("augmented")]
    assert len(copies) == 3 and all(r["perturbed"] and r["audio"].endswith("-p1.wav") for r in copies)
    assert not any("perturbed" in r for r in made["plain"])

    def peak_hz(x):
        return np.argmax(np.abs(np.fft.rfft(x * np.hanning(len(x)), 1 << 20))) * 16000 / (1 << 20)

    for copy in copies:
        stem = copy["audio"].split("/")[-1].replace("-p1.wav", "")
        original = next(r["audio"] for r in made["perturbed"] if not r.get("augmented") and f"/{stem}." in r["audio"])
        rng = np.random.default_rng([zlib.crc32(f"{original}|1".encode()), 1])
        cents = round(100 * rng.uniform(*PERTURB_PITCH_ST))
        plain, _ = sf.read(tmp_path / "plain" / copy["audio"].replace("-p1", "-a1"))
        shifted, _ = sf.read(tmp_path / "perturbed" / copy["audio"])
        heard = 1200 * np.log2(peak_hz(shifted) / peak_hz(plain))
        assert abs(heard - cents) < 20, (copy["audio"], cents, heard)
