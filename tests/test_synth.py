"""The synthetic expressive corpus: plan, files, resume, and acoustics against the table."""
import dataclasses
import hashlib
import json
import os
from collections import defaultdict

import numpy as np
import pytest
import soundfile as sf

from semollama_core.corpus import synth
from semollama_core.corpus.synth import SynthError, SynthOptions, synthesize_corpus

TINY = SynthOptions(sentences=8, per_pair=1, workers=1, seed=3, noise_prob=0.0, progress=False)
# held out: every festival voice in the test split, speaking the 2 test sentences of 20
HELDOUT = dataclasses.replace(TINY, sentences=20, per_pair=3, engines=("festival",), split="test")
MANIFEST_FIELDS = {"audio", "emotion", "transcript", "speaker", "split", "engine", "voice",
                   "snr_db", "sentence_id"}


def _make_corpus(tmp_path_factory, name: str, options: SynthOptions):
    out = tmp_path_factory.mktemp(name)
    manifest = synthesize_corpus(out, options)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    return out, manifest, rows


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    return _make_corpus(tmp_path_factory, "corpus", TINY)


@pytest.fixture(scope="module")
def festival_heldout(tmp_path_factory):
    return _make_corpus(tmp_path_factory, "heldout", HELDOUT)


def test_sentence_list_is_large_unique_and_short():
    sentences = synth.load_sentences()
    assert len(sentences) >= 320
    assert len({s.lower() for s in sentences}) == len(sentences)
    assert all(4 <= len(s.split()) <= 14 for s in sentences)


def test_manifest_rows_point_at_16k_mono_pcm16_clips(tiny_corpus):
    out, _, rows = tiny_corpus
    assert len(rows) == 8 * 4  # sentences x emotions x per_pair
    for row in rows:
        assert MANIFEST_FIELDS <= set(row)
        assert row["emotion"] in synth.CORE_EMOTIONS
        assert row["speaker"] == f"{row['engine']}:{row['voice']}"
        assert row["snr_db"] is None  # noise_prob 0
        info = sf.info(str(out / row["audio"]))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert 0.8 < info.duration < 10


def test_splits_share_no_sentence_and_no_voice(tiny_corpus):
    _, _, rows = tiny_corpus
    sentences, speakers = defaultdict(set), defaultdict(set)
    for row in rows:
        sentences[row["split"]].add(row["sentence_id"])
        speakers[row["split"]].add(row["speaker"])
    assert set(sentences) == {"train", "dev", "test"}
    for a, b in [("train", "dev"), ("train", "test"), ("dev", "test")]:
        assert not sentences[a] & sentences[b]
        assert not speakers[a] & speakers[b]


def test_voice_pools_have_both_sexes_and_disjoint_timbres():
    voices = synth.available_voices(("espeak-ng", "flite"))
    assert len(voices) >= 20
    pools = synth._split_voices(voices, seed=0)
    groups = {split: {g[0].group for g in pool} for split, pool in pools.items()}
    assert not groups["train"] & groups["test"] and not groups["train"] & groups["dev"]
    for pool in pools.values():
        assert {g[0].sex for g in pool} == {"male", "female"}


def test_rerun_keeps_existing_clips_and_remakes_broken_ones(tiny_corpus):
    out, manifest, rows = tiny_corpus
    clips = [out / row["audio"] for row in rows]
    mtimes = {path: path.stat().st_mtime_ns for path in clips}
    before = manifest.read_text()
    clips[0].write_bytes(b"not a wav")
    synthesize_corpus(out, TINY)
    assert manifest.read_text() == before
    assert all(path.stat().st_mtime_ns == mtimes[path] for path in clips[1:])
    assert sf.info(str(clips[0])).samplerate == 16000


def test_rerun_with_other_options_is_refused(tiny_corpus):
    out, _, _ = tiny_corpus
    with pytest.raises(SynthError, match="other options"):
        synthesize_corpus(out, dataclasses.replace(TINY, seed=4))
    with pytest.raises(SynthError, match="other options"):
        synthesize_corpus(out, dataclasses.replace(TINY, split="test"))
    # a corpus made before --split existed records no split, and must still resume
    assert "split" not in json.loads((out / "synth_options.json").read_text())


def test_default_plan_is_the_shipped_one():
    """The default corpus (seed 0, espeak-ng and flite) is what the shipped models were
    trained on: adding engines or options must not move a single clip or draw. Change the
    digest only together with PLAN_VERSION."""
    jobs = synth.plan_corpus(SynthOptions(), synth.load_sentences(), synth.DEFAULT_ENGINES)
    digest = hashlib.sha256()
    for job in jobs:
        digest.update((json.dumps(job.manifest_row(), sort_keys=True) + repr(job.params)
                       + "\n").encode())
    assert len(jobs) == 3392
    assert digest.hexdigest() == "449756184e692195a5f7d362aa3ef7bb2d8bf255362259b52df51bb5009fde76"


def test_median_f0_finds_a_known_pitch():
    rate = 16000
    t = np.arange(rate) / rate
    for f0 in (95.0, 180.0, 260.0):
        tone = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 8))
        assert synth.median_f0(tone, rate) == pytest.approx(f0, rel=0.03)


def _acoustics(out, rows, options=TINY):
    """Per (sentence, speaker): emotion -> (median F0, speech seconds, level without the
    random recording gain)."""
    jobs = {job.audio: job for job in synth.plan_corpus(
        options, synth.load_sentences(), synth._resolve_engines(options.engines))}
    groups = defaultdict(dict)
    for row in rows:
        samples, rate = sf.read(str(out / row["audio"]))
        level = synth.speech_rms_db(samples, rate) - jobs[row["audio"]].params.recording_gain_db
        groups[row["sentence_id"], row["speaker"]][row["emotion"]] = (
            synth.median_f0(samples, rate), synth.active_seconds(samples, rate), level)
    return list(groups.values())


def _assert_the_table_holds(groups):
    shift = lambda e: np.mean([12 * np.log2(g[e][0] / g["neutral"][0]) for g in groups])
    assert shift("happy") > 2.5 and shift("angry") > 0.8 and shift("sad") < -1.5
    assert np.mean([g["sad"][1] > g["angry"][1] for g in groups]) == 1.0
    rate = lambda e: np.mean([g["neutral"][1] / g[e][1] for g in groups])
    assert rate("sad") < 0.9 and rate("happy") > 1.05 and rate("angry") > 1.1
    level = lambda e: np.mean([g[e][2] - g["neutral"][2] for g in groups])
    assert level("sad") < -4 and 1 < level("happy") < 5 and level("angry") > 4


def test_emotions_move_pitch_rate_and_level_as_the_table_says(tiny_corpus):
    out, _, rows = tiny_corpus
    _assert_the_table_holds(_acoustics(out, rows))


def test_festival_heldout_corpus_is_all_test_with_unseen_sentences(festival_heldout):
    out, _, rows = festival_heldout
    assert len(rows) == 2 * 3 * 4  # test sentences x per_pair x emotions
    for row in rows:
        assert MANIFEST_FIELDS | {"sex"} <= set(row)
        assert row["split"] == "test" and row["engine"] == "festival"
        assert row["speaker"] == f"festival:{row['voice']}"
        assert row["sex"] == synth.FESTIVAL_VOICES[row["voice"]][0]
        assert row["snr_db"] is None  # noise_prob 0
        info = sf.info(str(out / row["audio"]))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert 0.8 < info.duration < 10
    assert {row["voice"] for row in rows} == set(synth.FESTIVAL_VOICES)
    # the sentences are the test sentences of the standard corpus with the same seed and size
    standard = synth.plan_corpus(dataclasses.replace(HELDOUT, engines=None, split=None),
                                 synth.load_sentences(), synth.DEFAULT_ENGINES)
    test_sentences = {job.sentence_id for job in standard if job.split == "test"}
    seen_sentences = {job.sentence_id for job in standard if job.split != "test"}
    assert {row["sentence_id"] for row in rows} == test_sentences
    assert not test_sentences & seen_sentences


def test_festival_emotions_follow_the_table(festival_heldout):
    out, _, rows = festival_heldout
    _assert_the_table_holds(_acoustics(out, rows, HELDOUT))


def test_heldout_plan_puts_noise_on_every_clip_and_every_voice_in_one_split():
    options = dataclasses.replace(HELDOUT, sentences=None, noise_prob=1.0)
    jobs = synth.plan_corpus(options, synth.load_sentences(), ("festival",))
    assert {job.split for job in jobs} == {"test"}
    assert all(synth.SNR_DB[0] <= job.params.snr_db <= synth.SNR_DB[1] for job in jobs)
    assert all(voice.engine == "festival" for job in jobs for _, voice in job.params.babble)
    assert len({job.voice.group for job in jobs}) == len(set(synth.FESTIVAL_VOICES.values()))


def test_noise_is_mixed_at_the_planned_snr():
    jobs = synth.plan_corpus(dataclasses.replace(TINY, noise_prob=1.0), synth.load_sentences(),
                             ("espeak-ng",))
    job = next(j for j in jobs if j.emotion == "neutral" and j.params.noise_kind != "babble")
    clean = synth.render_clip(dataclasses.replace(
        job, params=dataclasses.replace(job.params, noise_kind=None, snr_db=None)))
    noisy = synth.render_clip(job)
    noise_db = 10 * np.log10(np.mean((noisy - clean) ** 2))
    assert synth.speech_rms_db(clean, 16000) - noise_db == pytest.approx(job.params.snr_db, abs=0.5)


def test_bad_input_gives_one_line_errors(tmp_path, monkeypatch, capsys):
    with pytest.raises(SynthError, match="unknown emotion 'bored'"):
        synthesize_corpus(tmp_path, dataclasses.replace(TINY, emotions=("neutral", "bored")))
    with pytest.raises(SynthError, match="--split must be one of train, dev, test"):
        synthesize_corpus(tmp_path, dataclasses.replace(TINY, split="heldout"))
    with pytest.raises(SynthError, match="unknown engine 'mbrola'"):
        synthesize_corpus(tmp_path, dataclasses.replace(TINY, engines=("mbrola",)))
    with monkeypatch.context() as patch:
        patch.setattr(synth, "_festival_installed_voices", lambda: frozenset({"kal_diphone"}))
        with pytest.raises(SynthError, match="apt-get install festvox-kdlpc16k festvox-us-slt-hts"):
            synthesize_corpus(tmp_path, HELDOUT)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SynthError, match="cannot write to"):
        synthesize_corpus(blocker / "corpus", TINY)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert synth.main(["--out", str(tmp_path / "c"), "--sentences", "4"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "Debian package espeak-ng" in error
    assert not (tmp_path / "c").exists()
