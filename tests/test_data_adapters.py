"""Corpus adapters (RAVDESS, CREMA-D, IEMOCAP, Hugging Face datasets) turning corpora built
here into manifests.

Split from test_data.py (see also test_data_manifest.py for manifests and zip archives);
shared helpers are in data_support.py.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf

from semollama_core.corpus.manifest import ManifestError, ManifestWarning, manifest_labels, read_manifest
from semollama_core.corpus.converters import cremad_manifest, hf_dataset_manifest, iemocap_manifest, ravdess_manifest

from data_support import REPO, SAMPLE_RATE, tone, wav_bytes, write_lines, write_wav


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
