"""Evaluation: metric modules against hand-computed values, the command-line contracts on a
tiny espeak-ng manifest, rescoring from raw predictions, the teacher-forced NLL."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eval.common import load_metric, response_nll
from eval.robustness import mix_at_snr
from eval.ser import group_values

REPO = Path(__file__).resolve().parent.parent
EMOTIONS = {"neutral": (160, 50), "happy": (190, 85), "sad": (120, 25), "angry": (210, 65)}  # words/min, pitch
SENTENCES = ["They changed the schedule again.", "The bank called about my account.",
             "I will see you tomorrow.", "The meeting is at noon."]
VOICES = ["en", "en-us"]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """16 clips: 4 emotions x 2 voices, a train and a test split, plus noise and engine fields."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "clips").mkdir()
    rows = []
    for split in ("train", "test"):
        for k, (emotion, (speed, pitch)) in enumerate(EMOTIONS.items()):
            for v, voice in enumerate(VOICES):
                name = f"clips/{split}-{emotion}-{voice}.wav"
                sentence = SENTENCES[(k + v + (split == "test")) % len(SENTENCES)]
                subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w",
                                str(root / name), sentence], check=True)
                rows.append({"audio": name, "emotion": emotion, "transcript": sentence, "speaker": voice,
                             "split": split, "snr_db": [5.0, 25.0][v], "engine": "espeak-ng"})
    path = root / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def system():
    from semollama_core.config import SEmoConfig
    from semollama_core.model.pipeline import load_system

    return load_system(SEmoConfig(quantization="none"))


def run_cli(module: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def check_class_scores(scores: dict, n: int) -> None:
    assert 0 <= scores["ua"] <= 1 and 0 <= scores["wa"] <= 1 and 0 <= scores["macro_f1"] <= 1
    assert scores["n"] == n
    k = len(scores["labels"])
    assert np.array(scores["confusion"]).shape == (k, k)
    assert sum(map(sum, scores["confusion"])) == n


# ----------------------------------------------------------------------------- metrics

def test_ua_differs_from_wa_on_imbalanced_labels():
    refs = ["a", "a", "a", "a", "b"]
    preds = ["a", "a", "a", "a", "a"]  # always the majority class
    assert load_metric("accuracy").compute(predictions=preds, references=refs)["accuracy"] == pytest.approx(0.8)
    ua = load_metric("unweighted_accuracy").compute(predictions=preds, references=refs)["unweighted_accuracy"]
    assert ua == pytest.approx(0.5)  # recall a = 1, recall b = 0
    f1 = load_metric("macro_f1").compute(predictions=preds, references=refs)["macro_f1"]
    assert f1 == pytest.approx((8 / 9 + 0) / 2)  # F1 a = 2*4/(5+4)
    cm = load_metric("confusion").compute(predictions=preds, references=refs, labels=["a", "b"])
    assert cm["confusion"] == [[4, 0], [1, 0]]


def test_ua_averages_only_classes_with_references_in_the_label_set():
    ua = load_metric("unweighted_accuracy").compute(predictions=["a", "c", "b"], references=["a", "a", "b"],
                                                    labels=["a", "b", "c"])
    assert ua["unweighted_accuracy"] == pytest.approx((0.5 + 1.0) / 2)


def test_rouge_module_on_known_pairs():
    rouge = load_metric("rouge").compute(predictions=["the cat sat", "dogs run"],
                                         references=["the cat sat", "a blue sky"])
    assert rouge["rouge1_per_pair"] == [1.0, 0.0] and rouge["rougeL"] == pytest.approx(0.5)


def test_paired_nll_differences_resample_sentences():
    from eval.align import paired_nll_differences

    rows = [{"transcript": f"sentence {i // 4}", "nll": {"speech_llm": 1.0, "text_only": 1.0 + d, "oracle": 0.5}}
            for i, d in enumerate([0.5, 0.4, 0.6, 0.5] * 5 + [-0.1, 0.0, 0.1, 0.0])]
    out = paired_nll_differences(rows)
    lower, upper = out["text_only"]["ci95"]
    assert out["text_only"]["groups"] == 6 and out["text_only"]["n"] == 24
    assert lower < out["text_only"]["mean"] < upper and lower > 0  # speech_llm clearly lower here
    assert out["text_only"]["reference_lower_share"] == pytest.approx(21 / 24)  # ties are not "lower"
    assert out["oracle"]["mean"] == pytest.approx(-0.5) and "speech_llm" not in out
    mixed = paired_nll_differences([{**r, "nll": {**r["nll"], "text_only": 1.0 + (0.3 if (i // 4) % 2 else -0.3)}}
                                    for i, r in enumerate(rows)])
    assert mixed["text_only"]["ci95"][0] < 0 < mixed["text_only"]["ci95"][1]


def test_snr_fields_are_grouped_in_bands():
    assert group_values("snr_db", [3.0, 7.0, 25.0, None]) == ["0-5 dB", "5-10 dB", "20-30 dB", "clean"]
    assert group_values("utt_id", ["a", "b", "c", "d", "e"]) is None  # unique per row: not a breakdown


def test_mix_at_snr_reaches_the_requested_snr():
    rng = np.random.default_rng(0)
    clip, noise = rng.standard_normal(16000).astype(np.float32), rng.standard_normal(16000).astype(np.float32)
    mixed = mix_at_snr(clip, noise, 5.0)
    snr = 10 * math.log10(np.mean(clip ** 2) / np.mean((mixed - clip) ** 2))
    assert snr == pytest.approx(5.0, abs=0.01)


# ----------------------------------------------------------------------------- library

def test_response_nll_is_batch_invariant_and_lowest_for_the_greedy_answer(system):
    from semollama_core.model.generation import DecodingOptions
    from semollama_core.model.pipeline import PromptInput

    prompts = [PromptInput("oracle", transcript=s, emotion=e) for s, e in zip(SENTENCES[:3], EMOTIONS)]
    greedy = system.generate(prompts, DecodingOptions(max_new_tokens=8))
    batched = response_nll(system, prompts, greedy)
    single = [response_nll(system, [p], [r])[0] for p, r in zip(prompts, greedy)]
    assert batched == pytest.approx(single, abs=1e-3)  # left padding does not change the result
    shuffled = response_nll(system, prompts, greedy[1:] + greedy[:1])
    assert np.mean(batched) < np.mean(shuffled)


def test_judge_scores_are_in_range(system):
    from eval.judge import EMBEDDED_LABEL, JudgeItem, load_judge

    judge = load_judge(system)
    assert judge.label == EMBEDDED_LABEL
    items = [JudgeItem("I lost my keys.", "sad", "Oh no, that sounds stressful. I'm sorry."),
             JudgeItem("I got the job!", "happy", "The capital of France is Paris.")]
    scores = judge.emotion_understanding(items)
    assert all(1 <= s <= 10 for s in scores)
    wins = judge.pairwise_empathy(items, ["Whatever.", "Congratulations, that's wonderful!"])
    assert all(0 <= p <= 1 for p in wins)


# ----------------------------------------------------------------------------- command lines

def test_ser_cli_contract_and_rescoring(manifest, tmp_path):
    out = tmp_path / "ser.json"
    done = run_cli("eval.ser", manifest, "--out", out, "--quantization", "none", "--batch-size", "4")
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert {"speech_llm", "text_only", "standalone"} <= set(report["systems"])
    for scores in report["systems"].values():
        check_class_scores(scores, n=8)  # the test split
        assert scores["labels"] == list(EMOTIONS)
    assert report["systems"]["standalone"]["ua"] > 0.25  # fitted on train: clearly separable tempo/pitch
    assert {"speaker", "snr_db", "engine"} <= set(report["breakdowns"])
    assert set(report["breakdowns"]["snr_db"]) == {"5-10 dB", "20-30 dB"}
    assert {"config", "manifest", "timestamp", "machine"} <= set(report["metadata"])
    assert all(s["ua_ci95"][0] <= s["ua"] <= s["ua_ci95"][1] for s in report["systems"].values())
    assert {"adapter_sha256", "manifest_sha256", "commit", "machine", "command", "date"} <= set(report["meta"])
    assert Path(report["figure"]["html"]).is_file()

    again = tmp_path / "rescored.json"
    done = run_cli("eval.ser", "--rescore", tmp_path / "ser.predictions.jsonl", "--out", again, "--no-figure")
    assert done.returncode == 0, done.stderr[-2000:]
    rescored = json.loads(again.read_text())
    assert rescored["systems"] == report["systems"] and rescored["breakdowns"] == report["breakdowns"]


def test_align_cli_contract(manifest, tmp_path):
    out = tmp_path / "align.json"
    done = run_cli("eval.align", manifest, "--out", out, "--quantization", "none", "--limit", "2",
                   "--max-new-tokens", "12", "--judge")
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert {"speech_llm", "text_only", "neutral_aligned", "oracle"} <= set(report["nll"])
    # Not asserted here: oracle < speech_llm on 2 clips. A greedy answer is not the likeliest
    # sequence under every prompt, and an adapter trained to imitate oracle answers can make them
    # likelier than the oracle prompt itself on a clip. The floor on average, on the shipped
    # configuration, is tests/test_eval_hygiene.py's; here: one backend decoded and scored.
    assert 0 < report["nll"]["oracle"] < 20 and report["backend"].startswith("oracle answers and every answer")
    assert report["nll"]["speech_only"] is not None and report["emotion_fit_proxy"]["validation"]["n"] == 2
    for name in ("speech_llm", "text_only"):
        metrics = report["response_metrics"][name]
        assert 0 <= metrics["rouge1"] <= 1 and -1 <= metrics["semantic_similarity"] <= 1
    assert report["judge"]["label"] == "judge: embedded SmolLM2-135M (weak)"
    rows = [json.loads(line) for line in (tmp_path / "align.predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["oracle_response"] for r in rows)


def test_probe_and_robustness_cli_contracts(manifest, tmp_path):
    done = run_cli("eval.probe", manifest, "--out", tmp_path / "probe.json", "--quantization", "none")
    assert done.returncode == 0, done.stderr[-2000:]
    probe = json.loads((tmp_path / "probe.json").read_text())
    assert {"speech_llm", "backbone"} <= set(probe["systems"])
    check_class_scores(probe["systems"]["speech_llm"], n=8)

    rob_dir = tmp_path / "rob"
    done = run_cli("eval.robustness", manifest, "--out", rob_dir, "--quantization", "none", "--snrs", "clean,0",
                   "--noise", "white,babble", "--limit", "4", "--systems", "speech_llm,standalone")
    assert done.returncode == 0, done.stderr[-2000:]
    rob = json.loads((rob_dir / "robustness.json").read_text())
    assert rob["snrs"] == ["clean", "0"]
    for kind in ("white", "babble"):
        for curve in rob["ua"][kind].values():
            assert set(curve) == {"clean", "0"} and all(0 <= v <= 1 for v in curve.values())
    assert (rob_dir / "robustness.html").is_file()
    lo, hi = rob["ua_ci95"]["babble"]["speech_llm"]["0"]
    assert lo <= rob["ua"]["babble"]["speech_llm"]["0"] <= hi and rob["meta"]["adapter_sha256"]


@pytest.mark.parametrize("module", ["eval.ser", "eval.align", "eval.probe", "eval.robustness"])
def test_bad_manifest_gives_one_line_error(module, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"audio": "a.wav", "emotion": "sad"}\n{not json\n')
    out = tmp_path / ("out" if module == "eval.robustness" else "out.json")
    done = run_cli(module, bad, "--out", out)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "bad.jsonl" in lines[0], done.stderr
    assert not out.exists()
