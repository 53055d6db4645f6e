"""Evaluation hygiene: intervals that resample sentences, the `meta` of every result, the
emotion-fit proxy, a clip's predictions independent of its batch and manifest, the oracle
as the NLL floor on the shipped configuration, and eval.ablate on a miniature manifest."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eval.common import (grouped_bootstrap_ci, paired_ua_difference, resampling_groups, run_meta, sha256_file,
                         ua_bootstrap_ci)

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "assets" / "examples"


# ----------------------------------------------------------------------------- intervals and meta

def test_bootstrap_resamples_whole_sentences():
    # 10 sentences x 4 clips; within a sentence the clips agree, so clips are not independent
    values = np.repeat(np.arange(10) % 2, 4).astype(float)
    by_sentence = grouped_bootstrap_ci(values, [f"s{i // 4}" for i in range(40)])
    by_clip = grouped_bootstrap_ci(values, [f"c{i}" for i in range(40)])
    assert by_sentence[0] < 0.5 < by_sentence[1]
    assert by_sentence[1] - by_sentence[0] > 1.5 * (by_clip[1] - by_clip[0])  # clips would overstate certainty
    assert grouped_bootstrap_ci(values, [f"s{i // 4}" for i in range(40)]) == by_sentence  # seeded


def test_ua_interval_brackets_ua_and_groups_fall_back_to_clips():
    refs = ["a", "b"] * 20
    preds = ["a", "b"] * 15 + ["b", "a"] * 5
    lo, hi = ua_bootstrap_ci(refs, preds, ["a", "b", "c"], [f"s{i // 2}" for i in range(40)])
    assert lo <= 0.75 <= hi and 0 <= lo and hi <= 1
    groups = resampling_groups([{"sentence": "Hello  there", "audio": "x.wav"}, {"sentence": None, "audio": "y.wav"}])
    assert groups == ["sentence:hello there", "clip:y.wav"]


def test_paired_difference_is_the_ua_gap_and_its_interval_sees_pairing():
    from semollama_core import unweighted_accuracy

    refs = ["a", "b"] * 30
    before = ["a", "b"] * 20 + ["b", "a"] * 10      # UA 2/3
    after = before[:]
    for i in range(40, 52):                        # 12 mistakes mended, nothing else moves
        after[i] = refs[i]
    d = paired_ua_difference(refs, after, before, ["a", "b"])
    gap = unweighted_accuracy(refs, after, ("a", "b")) - unweighted_accuracy(refs, before, ("a", "b"))
    assert d["n"] == 60 and abs(d["difference"] - gap) < 1e-4 and abs(gap - 0.2) < 1e-9
    assert 0 < d["ci95"][0] < 0.2 < d["ci95"][1]   # paired: the shared rows cancel, so zero is excluded
    same = paired_ua_difference(refs, before, before, ["a", "b"])
    assert same["difference"] == 0 and same["ci95"] == [0.0, 0.0]
    assert paired_ua_difference([], [], [], ["a"]) is None


def test_compare_cli_pairs_two_runs_by_clip_and_system(tmp_path):
    def run(name, predicted, sha):
        path = tmp_path / f"{name}.predictions.jsonl"
        rows = [{"audio": f"c{i}.wav", "system": "speech_llm", "emotion": e, "predicted": p, "sentence": f"s{i % 15}",
                 "extra": {"corpus": "ravdess" if i < 30 else "polish"}}
                for i, (e, p) in enumerate(zip(["angry", "neutral"] * 30, predicted))]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        (tmp_path / f"{name}.predictions.jsonl.meta.json").write_text(json.dumps({"adapter_sha256": sha}))
        return path

    truth = ["angry", "neutral"] * 30
    before = run("before", ["neutral"] * 60, "aaa")
    after = run("after", truth[:30] + ["neutral"] * 30, "bbb")
    out = tmp_path / "cmp.json"
    done = subprocess.run([sys.executable, "-m", "eval.compare", str(before), str(after), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    table = report["comparison"]["speech_llm"]
    assert table["ravdess"]["ua_before"] == 0.5 and table["ravdess"]["ua_after"] == 1.0
    assert table["ravdess"]["difference"] == 0.5 and table["ravdess"]["ci95"][0] > 0
    assert table["polish"]["difference"] == 0 and table["all"]["n"] == 60
    assert (report["before"]["adapter_sha256"], report["after"]["adapter_sha256"]) == ("aaa", "bbb")
    other = tmp_path / "other.predictions.jsonl"
    other.write_text(json.dumps({"audio": "z.wav", "system": "speech_llm", "emotion": "sad",
                                 "predicted": "sad"}) + "\n")
    done = subprocess.run([sys.executable, "-m", "eval.compare", str(before), str(other), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr.strip().count("\n") == 0
    assert done.stderr.startswith("error: The two runs share no scored clip")


def test_meta_names_the_adapter_file_that_ran(tmp_path):
    from semollama_core.config import ASSETS

    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"audio": "a.wav", "emotion": "sad"}\n')
    meta = run_meta(manifest)
    assert meta["adapter_sha256"] == sha256_file(ASSETS / "speech_llm" / "adapter.safetensors")
    assert meta["manifest_sha256"] == sha256_file(manifest)
    assert {"commit", "machine", "command", "date"} <= set(meta) and meta["machine"]["cpu_count"]


# ----------------------------------------------------------------------------- the proxy

def test_emotion_fit_proxy_prefers_the_fitting_emotion():
    from eval.emotion_fit import emotion_fit

    answers = ["I'm so sorry, that must be really painful for you.", "Congratulations, that's wonderful news!",
               "I understand you're furious about this; let's fix it."]
    fits = emotion_fit(answers, ["sad", "happy", "angry"], ["neutral", "happy", "sad", "angry"])
    assert [f["top1"] for f in fits] == [1, 1, 1]
    assert all(0 < f["p_true"] <= 1 for f in fits)
    wrong = emotion_fit(answers[:1], ["happy"], ["neutral", "happy", "sad", "angry"])[0]
    assert wrong["top1"] == 0 and wrong["p_true"] < fits[0]["p_true"]


# ----------------------------------------------------------------------------- determinism

@pytest.fixture(scope="module")
def shipped():
    """The shipped configuration (NF4 LLM, shipped adapters), decoded by torch: llama.cpp is
    tested in test_llama_cpp_decode and the backend rule holds for either."""
    from semollama_core.config import SEmoConfig
    from semollama_core.model.pipeline import load_system

    return load_system(SEmoConfig.from_env(decoder="torch"))


def _example_rows():
    from semollama_core.corpus.manifest import iter_manifest

    return list(iter_manifest(EXAMPLES / "examples.jsonl", require_emotion=True))


def test_predictions_do_not_depend_on_the_batch(shipped):
    from eval.ser import run_ser

    rows = _example_rows()
    systems = ("speech_llm", "emotion_head", "standalone", "text_only")
    labels = shipped.config.labels
    together = run_ser(shipped, rows[::-1], systems, batch_size=8, progress=False, labels=labels,
                       given_transcripts=True)
    alone = [r for u in rows[:3] for r in run_ser(shipped, [u], systems, batch_size=1, progress=False,
                                                       labels=labels, given_transcripts=True)]
    key = {(r["audio"], r["system"]): r for r in together}
    for row in alone:
        other = key[(row["audio"], row["system"])]
        assert row["predicted"] == other["predicted"], (row["system"], row["audio"])
        for label in labels:
            assert row["probs"][label] == pytest.approx(other["probs"][label], abs=2e-3), row["system"]


def test_speech_embeddings_do_not_depend_on_the_batch(shipped):
    rows = _example_rows()
    clips = [shipped.load(str(u.audio_path)) for u in rows]
    features = shipped.features_many(clips, transcribe=False)
    batched = shipped.speech_embeddings(features)
    for i in (0, 5):
        single = shipped.speech_embeddings([features[i]])[0]
        assert single.shape == batched[i].shape
        assert float((single - batched[i]).abs().max()) < 1e-5


def test_oracle_nll_is_the_lowest_on_the_shipped_configuration(shipped):
    from eval.align import run_alignment

    rows = _example_rows()[:3]
    out = run_alignment(shipped, rows, systems=("speech_llm", "speech_only", "text_only"), batch_size=3,
                        max_new_tokens=16, progress=False)
    # The oracle's answer is the greedy choice of the model that scores it, under its own prompt; on
    # these three clips no other prompt makes it likelier on average. That is not a law: a greedy
    # answer is not the likeliest sequence under every prompt, and on 192 v2 test clips under
    # llama.cpp speech_llm's NLL ties the oracle's (-0.016 [-0.120, 0.109], results/align.json).
    mean = {name: np.mean([row["nll"][name] for row in out]) for name in out[0]["nll"]}
    assert mean["oracle"] == min(mean.values()), mean
    assert all(row["backend"] == out[0]["backend"] for row in out)


# ----------------------------------------------------------------------------- eval.ablate

def test_ablate_cli_on_a_miniature_manifest(tmp_path):
    rows = [json.loads(line) for line in (EXAMPLES / "examples.jsonl").read_text().splitlines()][::4]  # neutral, sad
    for row in rows:
        shutil.copy(EXAMPLES / row["audio"], tmp_path / row["audio"])
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "ablate.json"
    done = subprocess.run([sys.executable, "-m", "eval.ablate", str(manifest), "--out", str(out), "--quantization",
                           "none", "--max-new-tokens", "6", "--limit", "2"], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**__import__("os").environ, "SEMOLLAMA_DECODER": "torch"})
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    variants = report["variants"]
    assert {"emotion_head", "speech_llm", "speech_only", "speech_llm_no_emotion_token",
            "speech_llm_no_frame_tokens", "neutral_aligned", "cascade", "text_only", "oracle"} <= set(variants)
    assert "nll" not in variants["emotion_head"] and 0 <= variants["emotion_head"]["ser_ua"] <= 1
    for name in ("speech_llm", "speech_only", "text_only"):
        e = variants[name]
        assert e["nll_ci95"][0] <= e["nll"] <= e["nll_ci95"][1] and 0 <= e["rougeL"] <= 1
        assert "emotion_fit_proxy" in e
    assert variants["oracle"]["nll"] < variants["text_only"]["nll"]
    assert report["meta"]["adapter_sha256"] and report["emotion_fit_proxy"]["validation"]["n"] == 2
    again = tmp_path / "rescored.json"
    done = subprocess.run([sys.executable, "-m", "eval.ablate", "--rescore", str(tmp_path / "ablate.predictions.jsonl"),
                           "--out", str(again)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    rescored = json.loads(again.read_text())
    assert rescored["variants"] == variants
    assert rescored["meta"]["adapter_sha256"] == report["meta"]["adapter_sha256"]
