"""Standalone SER (eGeMAPS + logistic regression) on synthetic tones differing in pitch and level."""
import json

import numpy as np
import pytest

from semollama_core.model.audio import SAMPLE_RATE, save_wav
from semollama_core.baselines.standalone_ser import (MODEL_FILE, SEROptions, StandaloneSER, StandaloneSERError,
    extract_features, main)

# class -> (F0 in Hz, peak amplitude): low/high pitch crossed with quiet/loud, like sad vs angry cues.
CLASSES = {"sad": (110.0, 0.05), "calm": (110.0, 0.4), "fearful": (250.0, 0.05), "angry": (250.0, 0.4)}
PER_CLASS, TRAIN_PER_CLASS = 10, 7


def harmonic_tone(f0: float, amplitude: float, rng: np.random.Generator, seconds: float = 2.0) -> np.ndarray:
    """Voiced-like clip: decaying harmonics with vibrato, random jitter of pitch and level, noise."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = f0 * 2 ** (rng.uniform(-1, 1) / 12)  # +-1 semitone
    amplitude = amplitude * 10 ** (rng.uniform(-2, 2) / 20)  # +-2 dB
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.02 * np.sin(2 * np.pi * 5 * t))) / SAMPLE_RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = np.clip(np.sin(np.pi * t / seconds) * 3, 0, 1)  # fade in and out
    clip = amplitude * envelope * voice / np.abs(voice).max() + 0.003 * rng.standard_normal(t.size)
    return clip.astype(np.float32)


@pytest.fixture(scope="module")
def dataset():
    rng = np.random.default_rng(0)
    split = {"train": ([], []), "test": ([], [])}
    for label, (f0, amplitude) in CLASSES.items():
        for i in range(PER_CLASS):
            waveforms, labels = split["train" if i < TRAIN_PER_CLASS else "test"]
            waveforms.append(harmonic_tone(f0, amplitude, rng))
            labels.append(label)
    return split


@pytest.fixture(scope="module")
def trained(dataset):
    waveforms, labels = dataset["train"]
    return StandaloneSER().fit(waveforms, labels, progress=False)


def test_held_out_accuracy_clearly_above_chance(trained, dataset):
    waveforms, labels = dataset["test"]
    predicted = trained.predict(waveforms)
    accuracy = np.mean([p == t for p, t in zip(predicted, labels)])
    assert accuracy >= 0.75, (accuracy, predicted, labels)  # chance is 0.25


def test_probabilities_are_a_distribution_over_labels(trained, dataset):
    probs = trained.predict_proba(dataset["test"][0])
    assert trained.labels == tuple(sorted(CLASSES))
    assert probs.shape == (len(dataset["test"][0]), len(CLASSES))
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)


def test_numpy_prediction_matches_scikit_learn(dataset):
    """Stored coefficients reproduce sklearn, for many classes and for sklearn's one-row binary form."""
    from sklearn.linear_model import LogisticRegression

    features = extract_features(dataset["train"][0])
    labels = np.array(dataset["train"][1])
    for keep in (list(CLASSES), ["sad", "angry"]):
        rows = np.isin(labels, keep)
        model = StandaloneSER().fit_features(features[rows], labels[rows], label_order=keep)
        z = (features[rows] - model.mean) / model.scale
        reference = LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced").fit(
            z, [keep.index(x) for x in labels[rows]])
        np.testing.assert_allclose(model.proba_from_features(features[rows]), reference.predict_proba(z),
                                   atol=1e-9)


def test_save_load_round_trip_gives_identical_probabilities(trained, dataset, tmp_path):
    path = trained.save(tmp_path / "ser")
    assert path.name == MODEL_FILE and path.stat().st_size < 20_000
    assert [p.name for p in path.parent.iterdir()] == [MODEL_FILE]  # no temp file left behind
    loaded = StandaloneSER.load(tmp_path / "ser")
    assert loaded.labels == trained.labels
    waveforms = dataset["test"][0][:4]
    assert np.array_equal(loaded.predict_proba(waveforms), trained.predict_proba(waveforms))


@pytest.mark.parametrize("damage", ["truncate", "wrong_shape", "not_json_object"])
def test_corrupt_model_file_gives_clear_error(trained, tmp_path, damage):
    path = trained.save(tmp_path)
    state = json.loads(path.read_text())
    if damage == "truncate":
        path.write_text(path.read_text()[:500])
    elif damage == "wrong_shape":
        state["coef"] = state["coef"][:-1]
        path.write_text(json.dumps(state))
    else:
        path.write_text("[1, 2, 3]")
    with pytest.raises(StandaloneSERError, match=rf"{MODEL_FILE} is corrupt.*train-ser"):
        StandaloneSER.load(tmp_path)


def test_missing_model_file_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(StandaloneSERError, match=rf"No standalone SER model at .*{MODEL_FILE}.*train-ser"):
        StandaloneSER.load(tmp_path / "nowhere")


def test_bad_inputs_are_rejected_with_clear_errors(trained, dataset):
    waveforms, labels = dataset["train"]
    with pytest.raises(StandaloneSERError, match="3 clips but 2 labels"):
        StandaloneSER().fit(waveforms[:3], labels[:2])
    with pytest.raises(StandaloneSERError, match="at least two emotion labels"):
        StandaloneSER().fit(waveforms[:2], ["sad", "sad"])
    with pytest.raises(StandaloneSERError, match="missing examples of \\['happy'\\]"):
        StandaloneSER().fit(waveforms[:2], labels[:2], label_order=["sad", "happy"])
    with pytest.raises(StandaloneSERError, match="too short"):
        trained.predict([np.zeros(400, np.float32)])
    with pytest.raises(StandaloneSERError, match="1-D float array"):
        trained.predict([np.zeros((2, 16000), np.float32)])
    with pytest.raises(StandaloneSERError, match="not trained"):
        StandaloneSER().predict(waveforms[:1])


def test_train_ser_command_trains_saves_and_reports_ua(dataset, tmp_path, capsys):
    rows = []
    for i, (waveform, label) in enumerate(zip(*dataset["train"])):
        if i % TRAIN_PER_CLASS < 3:  # 3 train clips per class keep this test fast
            save_wav(tmp_path / f"train{i}.wav", waveform)
            rows.append({"audio": f"train{i}.wav", "emotion": label, "split": "train"})
    for i, (waveform, label) in enumerate(zip(*dataset["test"])):
        save_wav(tmp_path / f"dev{i}.wav", waveform)
        rows.append({"audio": f"dev{i}.wav", "emotion": label, "split": "dev"})
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))

    assert main([str(manifest), "--out", str(tmp_path / "ser"), "--labels", "sad,angry"]) == 0
    out = capsys.readouterr().out
    assert "train UA" in out and "dev UA" in out and "n=6" in out
    assert StandaloneSER.load(tmp_path / "ser").labels == ("sad", "angry")

    assert main([str(manifest), "--out", str(tmp_path / "x"), "--split", "test"]) == 1
    assert "no rows with split 'test'" in capsys.readouterr().err
