"""The synthetic expressive corpus v2: plan, files, resume, person-disjoint splits, prosody
against the table, and a channel that never depends on the label."""
import dataclasses
import hashlib
import json
import os
import tempfile
from collections import defaultdict

import numpy as np
import pytest
import soundfile as sf

from semollama_core.corpus import audit, channel, plan, synth, voices
from semollama_core.corpus.synth import SynthError, SynthOptions, synthesize_corpus
from semollama_core.model.audio import mix_at_snr, speech_level_db

# the app's engines only: the extra corpus voices are never needed by the tests
BASIC = ("espeak-ng", "flite")
TINY = SynthOptions(sentences=8, per_pair=1, workers=1, seed=3, noise_prob=0.0, progress=False,
                    engines=BASIC)
# held out: every festival voice in the test split, speaking the 2 test sentences of 20
HELDOUT = dataclasses.replace(TINY, sentences=20, per_pair=3, engines=("festival",), split="test")
PINNED_COUNT = 3392  # 424 sentences x 4 emotions x 2 voices
PINNED_DIGEST = "27885d746dd42ae1d52cb0fa9e4403abc17c1d0956c03fa592a022e1edb4076d"
MANIFEST_FIELDS = {"audio", "emotion", "transcript", "speaker", "person", "split", "engine",
                   "voice", "snr_db", "sentence_id", "corpus", "language"}


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
        assert 0.8 < info.duration < 12


def test_no_clip_holds_digital_silence(tiny_corpus):
    """Pauses and edges carry room tone: no run of exact zeros anywhere."""
    out, _, rows = tiny_corpus
    for row in rows:
        samples, rate = sf.read(str(out / row["audio"]))
        assert audit.clip_features(samples, rate)["zero_run_max_s"] == 0.0, row["audio"]


def test_splits_share_no_sentence_and_no_person(tiny_corpus):
    _, _, rows = tiny_corpus
    sentences, persons = defaultdict(set), defaultdict(set)
    for row in rows:
        sentences[row["split"]].add(row["sentence_id"])
        persons[row["split"]].add(row["person"])
    assert set(sentences) == {"train", "dev", "test"}
    for a, b in [("train", "dev"), ("train", "test"), ("dev", "test")]:
        assert not sentences[a] & sentences[b]
        assert not persons[a] & persons[b]


def test_one_recorded_person_is_one_group_across_engines():
    """A CMU ARCTIC speaker is the same person in flite, festival and RHVoice; MBROLA and
    Piper voices are their own people. Planning needs no engine installed."""
    by_group = defaultdict(set)
    for voice in voices.available_voices(voices.ENGINES):
        by_group[voice.group].add(voice.speaker)
    assert by_group["cmu:slt"] == {"flite:slt", "festival:cmu_us_slt_arctic_hts"}
    assert by_group["cmu:kal"] == {"flite:kal", "flite:kal16", "festival:kal_diphone"}
    assert by_group["cmu:awb"] == {"flite:awb", "rhvoice:alan"}
    assert {"cmu:bdl", "cmu:clb", "mbrola:us1", "mbrola:us2", "mbrola:us3", "mbrola:en1",
            "piper:joe"} <= set(by_group)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_engine_plan_keeps_persons_in_one_split(seed):
    options = SynthOptions(seed=seed, engines=voices.ENGINES)
    jobs = synth.plan_corpus(options, synth.load_sentences(), voices.ENGINES)
    splits_of = defaultdict(set)
    for job in jobs:
        splits_of[job.voice.group].add(job.split)
    assert all(len(splits) == 1 for splits in splits_of.values()), \
        {g: s for g, s in splits_of.items() if len(s) > 1}
    for split in ("train", "test"):  # recorded people and both sexes where it matters
        speakers = {job.voice for job in jobs if job.split == split}
        assert {v.sex for v in speakers} == {"male", "female"}
        assert any(v.recorded for v in speakers) and any(not v.recorded for v in speakers)


def test_voice_pools_have_both_sexes_and_disjoint_timbres():
    pools = plan._split_voices(voices.available_voices(BASIC), seed=0)
    groups = {split: {g[0].group for g in pool} for split, pool in pools.items()}
    assert not groups["train"] & groups["test"] and not groups["train"] & groups["dev"]
    for pool in pools.values():
        assert {g[0].sex for g in pool} == {"male", "female"}


def test_channel_is_drawn_the_same_for_every_emotion():
    """Clipping, codecs, band-limiting, overdrive, pauses, level: one distribution for all."""
    jobs = synth.plan_corpus(SynthOptions(engines=BASIC), synth.load_sentences(), BASIC)
    by_emotion = defaultdict(list)
    for job in jobs:
        by_emotion[job.emotion].append(job.params.channel)
    traits = {
        "clipped": lambda c: c.clip_drive_db is not None,
        "codec": lambda c: c.codec is not None,
        "lowpass": lambda c: "lowpass" in c.mic_effects,
        "overdrive": lambda c: bool(c.overdrive),
        "pauses": lambda c: bool(c.pauses_s),
        "loud": lambda c: c.level_dbfs > -26,
        "noisy": lambda c: c.noise_kind is not None,
    }
    for name, trait in traits.items():
        shares = [np.mean([trait(c) for c in chans]) for chans in by_emotion.values()]
        assert max(shares) - min(shares) < 0.08, (name, shares)
    assert "emotion" not in channel.draw_channel.__code__.co_varnames


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
    assert json.loads((out / "synth_options.json").read_text())["plan_version"] == 2


BUSY_PARENT = """
import sys, threading
import torch
from semollama_core.corpus.synth import SynthOptions, synthesize_corpus
if __name__ == "__main__":
    x = torch.randn(2000, 2000)
    for _ in range(3):  # the intra-op thread pool started, as after the model tests
        x @ x
    stop = threading.Event()
    def busy():
        while not stop.is_set():
            torch.fft.rfft(torch.randn(64, 4096))
            x @ x
    thread = threading.Thread(target=busy)
    thread.start()
    try:
        synthesize_corpus(sys.argv[1], SynthOptions(**eval(sys.argv[2])))
    finally:
        stop.set()
        thread.join()
"""


def test_workers_start_fresh_beside_busy_torch_threads_and_clips_repeat_byte_for_byte(tiny_corpus, tmp_path):
    """A pool forked while the parent's torch threads were busy once hung at the workers'
    first pitch track (CI, after the model tests; a race, so not every run of this catches a
    fork), and sox's dither made a seed's clips differ from run to run. Two spawned workers
    beside busy torch threads: done in time, the same bytes as one worker."""
    import subprocess
    import sys

    out, _, rows = tiny_corpus
    options = {**dataclasses.asdict(TINY), "workers": 2}
    script = tmp_path / "busy_parent.py"
    script.write_text(BUSY_PARENT)
    again = tmp_path / "again"
    done = subprocess.run([sys.executable, str(script), str(again), repr(options)], capture_output=True,
                          text=True, timeout=180, cwd=os.getcwd(),
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert (again / "manifest.jsonl").read_text() == (out / "manifest.jsonl").read_text()
    differ = [row["audio"] for row in rows
              if (again / row["audio"]).read_bytes() != (out / row["audio"]).read_bytes()]
    assert not differ, f"{len(differ)} of {len(rows)} clips differ between runs: {differ[:3]}"


def test_default_plan_is_pinned():
    """The v2 plan with every engine (seed 0): adding engines or options must not move a
    single clip or draw. Change the digest only together with PLAN_VERSION."""
    jobs = synth.plan_corpus(SynthOptions(), synth.load_sentences(), voices.ENGINES)
    digest = hashlib.sha256()
    for job in jobs:
        digest.update((json.dumps(job.manifest_row(), sort_keys=True) + repr(job.params)
                       + "\n").encode())
    assert len(jobs) == PINNED_COUNT
    assert digest.hexdigest() == PINNED_DIGEST


def test_median_f0_finds_a_known_pitch():
    rate = 16000
    t = np.arange(rate) / rate
    for f0 in (95.0, 180.0, 260.0):
        tone = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 8))
        assert synth.median_f0(tone, rate) == pytest.approx(f0, rel=0.03)



def test_model_pitch_tracker_hears_a_voice_through_rumble():
    """Brown noise (rumble) at 10 dB SNR under a 120 Hz voice-like tone with a pause: the prosody
    channel's tracker finds the pitch, keeps the tone voiced and calls the pause unvoiced. Before
    its high-pass and peak rule, every pause frame read as voiced at 500 Hz (corpus v2's
    brown-noise clips: median F0 25 st off)."""
    from semollama_core.model.prosody import pitch_track

    rate, f0, hop = 16000, 120.0, 320
    t = np.arange(2 * rate) / rate
    tone = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 8))
    tone[rate // 2: rate] = 0.0  # half a second of pause under the noise
    noisy = mix_at_snr(tone, channel.coloured_noise("brown", len(tone), np.random.default_rng(0)), 10.0, rate)
    track, _ = pitch_track(noisy, rate)
    assert abs(12 * np.log2(np.median(track[track > 0]) / f0)) < 0.5
    assert (track[int(0.6 * rate / hop): int(0.9 * rate / hop)] > 0).mean() < 0.2
    assert (track[int(1.1 * rate / hop): int(1.9 * rate / hop)] > 0).mean() > 0.9
    # captions describe a clip with the tracker of the adapter's own channel: v1 voices the pause
    from semollama_core.model.prosody import describe_prosody

    v1, v2 = describe_prosody(noisy.astype(np.float32), 1), describe_prosody(noisy.astype(np.float32), 2)
    assert v1["voiced_fraction"] > v2["voiced_fraction"] + 0.15
    assert abs(12 * np.log2(v2["f0_median_hz"] / f0)) < 0.5


def _acoustics(options):
    """Per (sentence, speaker): emotion -> (median F0, speech seconds, F0 range in semitones),
    measured on each clip's speech before the channel (whose pauses and edges are random)."""
    engines = options.engines
    groups = defaultdict(dict)
    for job in synth.plan_corpus(options, synth.load_sentences(), engines):
        with tempfile.TemporaryDirectory() as workdir:
            speech = synth._render_speech(job, workdir)
        median, _, range_st = synth._f0_stats(speech, 16000)
        groups[job.sentence_id, job.voice.speaker][job.emotion] = (
            median, synth.active_seconds(speech, 16000), range_st)
    return list(groups.values())


def _assert_the_table_holds(groups):
    shift = lambda e: np.mean([12 * np.log2(g[e][0] / g["neutral"][0]) for g in groups])
    assert shift("happy") > 2.5 and shift("angry") > 0.8 and shift("sad") < -1.5
    rate = lambda e: np.mean([g["neutral"][1] / g[e][1] for g in groups])
    assert rate("sad") < 0.9 and rate("happy") > 1.05 and rate("angry") > 1.1
    spread = lambda e: np.median([g[e][2] / g["neutral"][2] for g in groups])
    assert spread("sad") < 0.9 and spread("happy") > spread("sad")


def test_emotions_move_pitch_rate_and_range_as_the_table_says():
    _assert_the_table_holds(_acoustics(TINY))


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
        assert 0.8 < info.duration < 12
    assert {row["voice"] for row in rows} == set(synth.FESTIVAL_VOICES)
    # the sentences are the test sentences of the standard corpus with the same seed and size
    standard = synth.plan_corpus(dataclasses.replace(HELDOUT, engines=BASIC, split=None),
                                 synth.load_sentences(), BASIC)
    test_sentences = {job.sentence_id for job in standard if job.split == "test"}
    seen_sentences = {job.sentence_id for job in standard if job.split != "test"}
    assert {row["sentence_id"] for row in rows} == test_sentences
    assert not test_sentences & seen_sentences


def test_festival_emotions_follow_the_table():
    _assert_the_table_holds(_acoustics(HELDOUT))


def test_heldout_plan_puts_noise_on_every_clip_and_every_voice_in_one_split():
    options = dataclasses.replace(HELDOUT, sentences=None, noise_prob=1.0)
    jobs = synth.plan_corpus(options, synth.load_sentences(), ("festival",))
    assert {job.split for job in jobs} == {"test"}
    assert all(synth.SNR_DB[0] <= job.params.snr_db <= synth.SNR_DB[1] for job in jobs)
    assert all(voice.engine == "festival" for job in jobs for _, voice in job.params.babble)
    assert len({job.voice.group for job in jobs}) == len(set(synth.FESTIVAL_VOICES.values()))


def test_noise_is_mixed_at_the_planned_snr(tmp_path):
    samples, rate = voices.engine_audio(voices.available_voices(("espeak-ng",))[0],
                                        "The bank called about my account.", str(tmp_path))
    speech = channel.sox(samples, rate, [])
    noise = channel.coloured_noise("pink", len(speech), np.random.default_rng(0))
    noisy = mix_at_snr(speech, noise, 12.0)
    noise_db = 10 * np.log10(np.mean((noisy - speech) ** 2))
    assert speech_level_db(speech) - noise_db == pytest.approx(12.0, abs=0.5)


def test_bad_input_gives_one_line_errors(tmp_path, monkeypatch, capsys):
    with pytest.raises(SynthError, match="unknown emotion 'bored'"):
        synthesize_corpus(tmp_path, dataclasses.replace(TINY, emotions=("neutral", "bored")))
    with pytest.raises(SynthError, match="--split must be one of train, dev, test"):
        synthesize_corpus(tmp_path, dataclasses.replace(TINY, split="heldout"))
    with pytest.raises(SynthError, match="unknown engine 'bogus'"):
        synthesize_corpus(tmp_path, dataclasses.replace(TINY, engines=("bogus",)))
    with monkeypatch.context() as patch:
        patch.setattr(voices, "_festival_installed_voices", lambda: frozenset({"kal_diphone"}))
        with pytest.raises(SynthError, match="apt-get install festvox-kdlpc16k festvox-us-slt-hts"):
            synthesize_corpus(tmp_path, HELDOUT)
    # the extra corpus voices: a missing engine names the install script
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("espeak-ng", "sox"):
        os.symlink(synth.shutil.which(tool), bin_dir / tool)
    with monkeypatch.context() as patch:
        patch.setenv("PATH", str(bin_dir))
        for engine in ("mbrola", "rhvoice"):
            with pytest.raises(SynthError, match="install_corpus_voices.sh"):
                synthesize_corpus(tmp_path, dataclasses.replace(TINY, engines=(engine,)))
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SynthError, match="cannot write to"):
        synthesize_corpus(blocker / "corpus", TINY)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert synth.main(["--out", str(tmp_path / "c"), "--sentences", "4"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "Debian package espeak-ng" in error
    assert not (tmp_path / "c").exists()


def test_session_spread_zero_renders_every_session_at_the_voices_own_pitch_and_rate():
    """--session-spread 0 (a dev experiment) keeps every other draw of the plan and refuses
    values outside [0, 1]."""
    base = synth.plan_corpus(SynthOptions(engines=BASIC), synth.load_sentences(), BASIC)
    flat = synth.plan_corpus(SynthOptions(engines=BASIC, session_spread=0.0), synth.load_sentences(), BASIC)
    assert [j.clip_id for j in flat] == [j.clip_id for j in base]
    assert all(j.params.session_pitch_st == 0 and j.params.session_tempo == 1.0 for j in flat)
    assert any(abs(j.params.session_tempo - 1.0) > 0.1 for j in base)
    assert [dataclasses.replace(j.params, session_pitch_st=0.0, session_tempo=1.0) for j in base] == \
        [j.params for j in flat]
    with pytest.raises(SynthError, match="session-spread"):
        synthesize_corpus(tempfile.mkdtemp(), SynthOptions(engines=BASIC, session_spread=2.0))


def test_effort_tilt_moves_only_the_voice_quality_tilt():
    """--effort-tilt K (a dev experiment): each clip's tilt is drawn around K x its drawn vocal
    effort instead of its class's mean; every other draw stays the plan's."""
    base = synth.plan_corpus(SynthOptions(engines=BASIC), synth.load_sentences(), BASIC)
    tilted = synth.plan_corpus(SynthOptions(engines=BASIC, effort_tilt=0.35), synth.load_sentences(), BASIC)
    for a, b in zip(base, tilted):
        assert dataclasses.replace(a.params, tilt_db=0.0) == dataclasses.replace(b.params, tilt_db=0.0)
        band = plan.EMOTION_BANDS[a.emotion]
        # the same normal draw around another mean (rounded to 0.01 dB)
        assert abs((b.params.tilt_db - 0.35 * b.params.level_db) - (a.params.tilt_db - band.tilt_db)) < 0.011
    with pytest.raises(SynthError, match="effort-tilt"):
        synthesize_corpus(tempfile.mkdtemp(), SynthOptions(engines=BASIC, effort_tilt=-1.0))
