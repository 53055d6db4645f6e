"""Behavioural alignment: train the speech adapter through the frozen LLM.

Loss: cross-entropy on response tokens only (the LM head runs only where there are
labels), optionally plus KL to the teacher, the same frozen LLM reading the
emotion-conditioned text prompt. Runs on CPU, one GPU, or many via `accelerate launch`.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..metrics import unweighted_accuracy
from ..model import prompts
from ..model.adapter import SpeechAdapter, save_adapter
from ..model.encoder import SpeechFeatures
from ..model.prosody import PITCH_TRACKERS, PROSODY_VERSION
from .alignment import AlignmentBatcher, alignment_loss
from .head import auxiliary_emotion_loss, fit_emotion_head, with_head_inputs
from .targets import (TARGET_DECODING, TASKS_EMOTION, TASKS_NEUTRAL, TargetCache, fingerprint, generate_targets,
    prosody_phrase, specs_for)

LEXICAL_PROMPT_INIT = " [That is how I said it. My words:]"


@dataclass(frozen=True)
class TrainOptions:
    mode: str = "emotion"              # "emotion" (speech_llm) or "neutral" (neutral_aligned ablation)
    steps: int = 600
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1.5e-3
    warmup: int = 30
    weight_decay: float = 0.01
    kl_weight: float = 0.0             # > 0 adds KL to the teacher's next-token distributions
    aux_weight: float = 1.0            # auxiliary emotion CE on pooled adapter states (emotion mode only)
    aux_batch: int = 48                # extra clips per step for the auxiliary loss alone (no LLM pass: cheap)
    task_weights: str = "respond:0.3,ser:0.45,asr:0.1,caption:0.15"
    eval_every: int = 100
    save_every: int = 100
    dev_limit: int = 64
    max_target_tokens: int = 40
    seed: int = 0
    mixed_precision: str = "no"        # "bf16" on GPU
    quantization: str = "bf16"         # LLM precision while training: bf16 is 2x fp32 on AVX512-BF16 CPUs; nf4 works too
    head_epochs: int = 60              # emotion head fitted first on utterance functionals (emotion mode)
    head_balance: int = 1              # 1: every (source, label) cell of the head's training clips weighs the same
    init: str = ""                     # start from this adapter folder (weights matched by name and shape)
    lexical: str = ""                  # "asr": the LLM also reads each clip's ASR hypothesis (prompts.LEXICAL_TASKS)
    lexical_clips: int = 0             # with lexical: transcribe at most this many clips (0: all); others train SER only
    lexical_prompt: int = 0            # with lexical: learnt tokens between the speech and the words
    freeze_speech: int = 0             # 1: keep every --init weight fixed; train only the lexical prompt
    prosody_version: int = PROSODY_VERSION  # the prosody channel (model.prosody); the shipped adapters read 1
    head_backbone: str = ""            # the emotion head reads this backbone's pooled states (embedded:whisper-base)
                                       # in place of the adapter's own; stage 2 passes the same as its --init
    target_clips: int = 0              # alignment targets for at most this many training clips (0: all; the
                                       # head still fits on every clip; other clips keep the targets they share)

    def weights(self) -> dict[str, float]:
        out = {}
        for part in self.task_weights.split(","):
            name, _, w = part.partition(":")
            out[name.strip()] = float(w or 1)
        allowed = TASKS_EMOTION if self.mode == "emotion" else TASKS_NEUTRAL
        if self.mode == "neutral":
            out = {"respond_neutral": 0.7, "asr": 0.3}
        unknown = set(out) - set(allowed)
        if unknown:
            raise ValueError(f"Tasks {sorted(unknown)} are not part of {self.mode} alignment ({allowed}).")
        return out


@dataclass
class Example:
    clip: int
    task: str
    target: str
    transcript: str
    emotion: str
    heard: str | None = None           # the ASR hypothesis the LLM reads after the speech (lexical adapters)


# ----- data ------------------------------------------------------------------------------
def load_clips(manifest: str, splits: tuple[str, ...], system, cache_dir: Path,
               head_backbone: str | None = None) -> dict[str, list]:
    """Frozen features for every clip (cached on disk, fp16), with utterance metadata; the prosody
    channel is the one `system`'s adapter reads (AdapterConfig.prosody_version). With a
    `head_backbone` (default: the one `system`'s adapter reads, if any) each clip also carries
    that backbone's pooled states (cached in one file per backbone, pooled_NAME.npz)."""
    from ..model.audio import load_audio
    from ..corpus.manifest import iter_manifest
    from ..model.encoder import extract_features, utterance_features
    from ..model.prosody import describe_prosody

    out: dict[str, list] = {s: [] for s in splits}
    utts = [u for u in iter_manifest(manifest, require_emotion=True) if u.split in splits]
    cache_dir.mkdir(parents=True, exist_ok=True)
    for utt in tqdm(utts, desc="features", unit="clip"):
        key = _feature_key(utt.audio_path, system.prosody_version)
        path = cache_dir / f"{key}.npz"
        data = dict(np.load(path)) if path.exists() else None
        if data is None or "utterance" not in data:  # no utterance: cached before the head read eGeMAPS
            audio = load_audio(utt.audio_path)
            if data is None:
                feats = extract_features(system.backbone, audio, system.prosody_version)
                data = {"states": feats.backbone_states.astype(np.float16), "prosody": feats.prosody,
                        "utterance": feats.utterance,
                        "describe": json.dumps(describe_prosody(audio, system.prosody_version))}
            else:
                data["utterance"] = utterance_features(audio)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, **data)
            tmp.replace(path)
        features = SpeechFeatures(data["states"], data["prosody"], data["utterance"])
        out[utt.split].append((utt, features, json.loads(str(data["describe"]))))
    head_backbone = system.adapter.config.head_backbone if head_backbone is None else head_backbone
    if head_backbone:
        add_head_states(out, head_backbone, cache_dir, system.config.threads)
    return out


def add_head_states(clips: dict[str, list], name: str, cache_dir: Path, threads: int = 0) -> None:
    """Set each clip's SpeechFeatures.head_states: `name`'s pooled encoder states, cached by clip
    key in CACHE/pooled_NAME.npz (written once at the end, so an interrupted run recomputes)."""
    from ..model.audio import load_audio
    from ..model.backbone import WhisperBackbone

    path = cache_dir / f"pooled_{name.replace(':', '_').replace('/', '_')}.npz"
    done = dict(np.load(path)) if path.exists() else {}
    backbone, added = None, 0
    rows = [c for part in clips.values() for c in part]
    for utt, features, _ in tqdm(rows, desc=f"pooled {name}", unit="clip"):
        key = _feature_key(utt.audio_path)
        if key not in done:
            backbone = backbone or WhisperBackbone(name, threads)
            done[key], added = backbone.pooled(load_audio(utt.audio_path)), added + 1
        features.head_states = done[key]
    if added:
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **done)
        tmp.replace(path)


def load_asr_hypotheses(utts: list, transcriber, cache_path: Path, *, limit: int | None = None,
                        seed: int = 0) -> dict[str, str]:
    """The ASR hypothesis of each clip (what an adapter with lexical="asr" reads), cached in a
    JSONL file under the clip's feature key and the ASR model, appended clip by clip so an
    interrupted run resumes. `limit` bounds CPU time: that many clips, drawn at random."""
    from ..model.audio import load_audio

    cached: dict[str, str] = {}
    if cache_path.exists():
        for line in cache_path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by an interrupted run
                continue
            if row.get("asr_model") == transcriber.name:
                cached[row["key"]] = row["asr"]
    keyed = [(_feature_key(u.audio_path), u) for u in utts]
    random.Random(seed).shuffle(keyed)
    wanted = keyed if limit is None else keyed[:limit]
    todo = [(k, u) for k, u in wanted if k not in cached]
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    with open(cache_path, "a") as f:
        for key, utt in tqdm(todo, desc="asr hypotheses", unit="clip"):
            cached[key] = transcriber.transcribe(load_audio(utt.audio_path))
            f.write(json.dumps({"key": key, "asr_model": transcriber.name, "asr": cached[key]}) + "\n")
            f.flush()
    return {k: cached[k] for k, _ in keyed if k in cached}


def attach_asr_hypotheses(manifest: str, clips: dict[str, list], system, cache_path: Path,
                          options: TrainOptions) -> None:
    """Set features.transcript of the train and dev clips from the cached ASR hypotheses."""
    from ..corpus.manifest import iter_manifest

    if options.lexical != "asr":
        raise ValueError(f"--lexical must be asr or empty, not {options.lexical!r}.")
    utts = [u for u in iter_manifest(manifest, require_emotion=True) if u.split in ("train", "dev")]
    heard = load_asr_hypotheses(utts, system.transcriber, cache_path, limit=options.lexical_clips or None,
                                seed=options.seed)
    for split in ("train", "dev"):
        for utt, features, _ in clips[split]:
            features.transcript = heard.get(_feature_key(utt.audio_path))


def _feature_key(path: Path, prosody_version: int = 1) -> str:
    """A clip's cache key: its file, and the prosody channel (v1 keys are those written before
    there were versions, so their caches stay valid)."""
    import hashlib

    stat = path.stat()
    version = "" if prosody_version == 1 else f"|prosody-v{prosody_version}"
    return hashlib.sha1(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}{version}".encode()).hexdigest()[:20]


def build_examples(clips: list, cache: TargetCache, tasks: tuple[str, ...], lexical: bool = False) -> list[Example]:
    """Examples of every task for every clip; with `lexical`, tasks that read words need the
    clip's ASR hypothesis (clips without one give SER examples only)."""
    examples = []
    for i, (utt, features, describe) in enumerate(clips):
        transcript = " ".join(utt.transcript.split())
        for task in tasks:
            heard = features.transcript if lexical and task in prompts.LEXICAL_TASKS else None
            if lexical and task in prompts.LEXICAL_TASKS and heard is None:
                continue
            if task == "asr":
                target = transcript
            else:
                phrase = prosody_phrase(utt.emotion, describe) if task == "caption" else None
                spec = specs_for(transcript, utt.emotion, phrase, (task,))[0]
                target = cache.get(spec.key)
                if target is None:
                    continue
            examples.append(Example(i, task, target, transcript, utt.emotion, heard))
    return examples


def needed_specs(clips: list, tasks: tuple[str, ...], caption_every: int = 3):
    """Target prompts for the clips. Captions, the least important task, are made for every
    `caption_every`-th (sentence, emotion) pair, from its first clip, to bound CPU time."""
    specs, pairs = [], {}
    for utt, _, describe in clips:
        pair = (utt.transcript, utt.emotion)
        first = pair not in pairs
        pairs.setdefault(pair, len(pairs))
        wanted = tuple(t for t in tasks if t != "caption" or (first and pairs[pair] % caption_every == 0))
        specs += specs_for(utt.transcript, utt.emotion, prosody_phrase(utt.emotion, describe), wanted)
    return specs


def init_from(adapter: SpeechAdapter, location: str) -> list[str]:
    """Copy every weight of a saved adapter whose name and shape match; returns those skipped."""
    from safetensors.torch import load_file

    from ..model.adapter import WEIGHTS_FILE, resolve_checkpoint

    state = load_file(str(resolve_checkpoint(location) / WEIGHTS_FILE))
    own = adapter.state_dict()
    usable = {k: v.float() for k, v in state.items() if k in own and own[k].shape == v.shape}
    adapter.load_state_dict(usable, strict=False)
    return sorted(set(own) - set(usable))


# ----- evaluation during training ---------------------------------------------------------
@torch.no_grad()
def dev_metrics(system, adapter, batcher, dev_clips, dev_examples, options: TrainOptions, device) -> dict:
    from ..model.pipeline import PromptInput

    adapter.eval()
    if system.adapter is not adapter:  # accelerate moves the module, it never copies it
        raise RuntimeError("dev metrics must score the adapter being trained")
    out = {}
    if options.mode == "emotion" and dev_clips:
        labels = tuple(system.config.labels)
        clips = dev_clips[: options.dev_limit]
        preds = []
        for i in range(0, len(clips), 16):
            preds += system.predict_emotions([PromptInput("speech_llm", f) for _, f, _ in clips[i:i + 16]], labels)
        truth = [u.emotion for u, _, _ in clips]
        out["dev_ser_ua"] = unweighted_accuracy(truth, [p.label for p in preds], labels)
    nll = []
    for i in range(0, min(len(dev_examples), options.dev_limit), options.batch_size):
        batch = dev_examples[i:i + options.batch_size]
        loss, _ = alignment_loss(system, adapter, batcher, batch, [f for _, f, _ in dev_clips], options, device)
        nll.append(float(loss))
    out["dev_nll"] = float(np.mean(nll)) if nll else float("nan")
    adapter.train()
    return out


# ----- the loop ----------------------------------------------------------------------------
def train(manifest: str, out_dir: str, options: TrainOptions, *, targets_dir: str | None = None,
          resume: bool = False, config=None) -> Path:
    from accelerate import Accelerator

    from ..config import SEmoConfig
    from ..model.llm import assert_frozen
    from ..model.pipeline import SEmoLlama

    accelerator = Accelerator(gradient_accumulation_steps=options.grad_accum,
                              mixed_precision=options.mixed_precision, cpu=not torch.cuda.is_available())
    device = str(accelerator.device)
    random.seed(options.seed), np.random.seed(options.seed), torch.manual_seed(options.seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = (config or SEmoConfig.from_env()).replace(quantization=options.quantization, adapter=None, device=device,
                                                       decoder="torch")  # targets and dev answers on the training path
    system = SEmoLlama(config)
    if options.prosody_version not in PITCH_TRACKERS:
        raise ValueError(f"--prosody-version must be one of {', '.join(map(str, PITCH_TRACKERS))}.")
    system.adapter.config = dataclasses.replace(system.adapter.config, prosody_version=options.prosody_version)
    tasks = tuple(options.weights())
    clips = load_clips(manifest, ("train", "dev"), system, Path(targets_dir or out) / "features",
                       head_backbone=options.head_backbone)
    if options.lexical:
        attach_asr_hypotheses(manifest, clips, system, Path(targets_dir or out) / "asr_hypotheses.jsonl", options)
    decoding = TARGET_DECODING
    cache = TargetCache(targets_dir or out, fingerprint(config.llm, config.quantization, config.system_prompt, decoding))
    random.Random(0).shuffle(clips["dev"])  # the dev subset spans sentences and voices
    dev_for_targets = clips["dev"][: options.dev_limit]
    target_pool = clips["train"]
    if 0 < options.target_clips < len(target_pool):  # targets cost the frozen LLM's decoding: bound them
        target_pool = random.Random(options.seed).sample(target_pool, options.target_clips)
    generate_targets(system, needed_specs(target_pool + dev_for_targets, tuple(t for t in tasks if t != "asr")),
                     cache, decoding)
    train_ex = build_examples(clips["train"], cache, tasks, bool(options.lexical))
    dev_ex = build_examples(dev_for_targets, cache, tasks, bool(options.lexical))
    random.Random(1).shuffle(dev_ex)
    if not train_ex:
        raise ValueError(f"{manifest} has no training examples (split 'train' with transcripts and emotions).")
    adapter = system.adapter
    if options.head_backbone != adapter.config.head_backbone:  # a head of another width; nothing else trained yet
        adapter = system.adapter = with_head_inputs(adapter, adapter.config.head_exclude, options.head_backbone)
    adapter.config = adapter.config.__class__(**{**asdict(adapter.config), "labels": tuple(config.labels),
                                                "task_mix": options.task_weights if options.mode == "emotion" else "respond_neutral:0.7,asr:0.3",
                                                "emotion_token": options.mode == "emotion",
                                                "lexical": options.lexical,
                                                "lexical_prompt": options.lexical_prompt if options.lexical else 0})
    if adapter.config.lexical_prompt and not hasattr(adapter, "lexical_prompt_tokens"):
        adapter.lexical_prompt_tokens = torch.nn.Parameter(torch.zeros(adapter.config.lexical_prompt,
                                                                       adapter.config.llm_dim, device=device))
        adapter.init_lexical_prompt(system.llm.embed_tokens, system.token_ids(LEXICAL_PROMPT_INIT))
    if not resume and options.mode == "emotion":
        adapter.init_emotion_embeddings(system.llm.embed_tokens, system.label_token_ids(tuple(config.labels)))
    if options.init and not resume:
        skipped = init_from(adapter, options.init)
        print(json.dumps({"init": options.init, "not_initialised": skipped}))
        if options.freeze_speech and any(k.startswith(("emotion_head.", "head_")) for k in skipped):
            raise ValueError(f"The emotion head of --init {options.init} does not fit this one: give stage 2 the "
                             "--head-backbone its stage 1 had.")
    if options.freeze_speech:
        if not options.init or not adapter.config.lexical_prompt:
            raise ValueError("--freeze-speech needs --init (the speech tokens to keep) and --lexical-prompt N.")
        for name, p in adapter.named_parameters():
            p.requires_grad_(name == "lexical_prompt_tokens")
        adapter.head_frozen = adapter.speech_frozen = True
    elif options.mode == "emotion" and adapter.config.utterance_dim and options.head_epochs > 0:
        if resume:  # the fitted head is in the checkpoint: keep it fixed
            adapter.head_frozen = True
            adapter.emotion_head.requires_grad_(False)
        else:
            head_report = fit_emotion_head(adapter, clips["train"], clips["dev"], epochs=options.head_epochs,
                                           seed=options.seed, device=device, balance=bool(options.head_balance))
            print(json.dumps(head_report))
            (out / "emotion_head.json").write_text(json.dumps(head_report, indent=2))
    adapter.train()
    optimizer = torch.optim.AdamW([p for p in adapter.parameters() if p.requires_grad], lr=options.lr,
                                  weight_decay=options.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / options.warmup) *
                                                 0.5 * (1 + math.cos(math.pi * min(1.0, s / options.steps))))
    adapter, optimizer, schedule = accelerator.prepare(adapter, optimizer, schedule)
    start_step = 0
    state_dir = out / "checkpoint"
    if resume and (state_dir / "trainer.json").exists():
        accelerator.load_state(str(state_dir))
        start_step = json.loads((state_dir / "trainer.json").read_text())["step"]
    batcher = AlignmentBatcher(system, options.max_target_tokens)
    sampler = _task_sampler(train_ex, options.weights(), options.seed + start_step)
    train_features = [f for _, f, _ in clips["train"]]
    aux_rng = random.Random(options.seed + 7 + start_step)
    aux_pool = [i for i, (u, _, _) in enumerate(clips["train"]) if u.emotion in config.labels]
    log_path = out / "log.csv"
    log = open(log_path, "a", newline="")
    writer = csv.writer(log)
    if start_step == 0:
        writer.writerow(["step", "loss", "ce", "kl", "aux", "lr", "dev_ser_ua", "dev_nll", "elapsed_s"])
    started = time.time()
    bar = tqdm(range(start_step, options.steps), desc=f"train[{options.mode}]", unit="step", initial=start_step,
               total=options.steps, disable=not accelerator.is_local_main_process)
    for step in bar:
        examples = [next(sampler) for _ in range(options.batch_size)]
        with accelerator.accumulate(adapter):
            loss, stats = alignment_loss(system, accelerator.unwrap_model(adapter), batcher, examples,
                                         train_features, options, device)
            if options.mode == "emotion" and options.aux_batch > 0 and options.aux_weight > 0 \
                    and not accelerator.unwrap_model(adapter).head_frozen:
                picks = aux_rng.sample(aux_pool, min(options.aux_batch, len(aux_pool)))
                aux = auxiliary_emotion_loss(accelerator.unwrap_model(adapter), [train_features[i] for i in picks],
                                             [clips["train"][i][0].emotion for i in picks], device)
                loss = loss + options.aux_weight * aux
                stats["aux"] = float(aux.detach())
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(adapter.parameters(), 1.0)
            optimizer.step(), schedule.step(), optimizer.zero_grad()
        assert_frozen(system.llm.model)
        row = {"step": step + 1, "loss": float(loss), **stats, "lr": schedule.get_last_lr()[0]}
        if (step + 1) % options.eval_every == 0 or step + 1 == options.steps:
            row.update(dev_metrics(system, accelerator.unwrap_model(adapter), batcher, clips["dev"], dev_ex, options, device))
        writer.writerow([row.get(k, "") for k in ("step", "loss", "ce", "kl", "aux", "lr", "dev_ser_ua", "dev_nll")]
                        + [round(time.time() - started, 1)])
        log.flush()
        bar.set_postfix(loss=f"{float(loss):.3f}", **{k: f"{v:.3f}" for k, v in row.items() if k.startswith("dev")})
        if (step + 1) % options.save_every == 0 or step + 1 == options.steps:
            accelerator.save_state(str(state_dir))
            (state_dir / "trainer.json").write_text(json.dumps({"step": step + 1}))
            save_adapter(accelerator.unwrap_model(adapter), out / "adapter")
    log.close()
    plot_loss_curve(log_path, out / "loss_curve.png")
    (out / "train_options.json").write_text(json.dumps(asdict(options), indent=2))
    (out / "semollama_config.json").write_text(json.dumps(config.to_dict(), indent=2, default=str))
    return out / "adapter"


def _task_sampler(examples: list[Example], weights: dict[str, float], seed: int):
    rng = random.Random(seed)
    by_task: dict[str, list[Example]] = {}
    for ex in examples:
        by_task.setdefault(ex.task, []).append(ex)
    tasks = [t for t in weights if t in by_task]
    w = [weights[t] for t in tasks]
    while True:
        task = rng.choices(tasks, w)[0]
        yield rng.choice(by_task[task])


def plot_loss_curve(log_path: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(open(log_path)))
    if not rows:
        return
    steps = [int(r["step"]) for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    ax[0].plot(steps, [float(r["loss"]) for r in rows], lw=0.6, label="train loss")
    dev = [(int(r["step"]), float(r["dev_nll"])) for r in rows if r.get("dev_nll")]
    if dev:
        ax[0].plot(*zip(*dev), "o-", label="dev NLL")
    ax[0].set_xlabel("step"), ax[0].legend(), ax[0].set_title("alignment loss")
    ua = [(int(r["step"]), float(r["dev_ser_ua"])) for r in rows if r.get("dev_ser_ua")]
    if ua:
        ax[1].plot(*zip(*ua), "o-")
    ax[1].set_ylim(0, 1), ax[1].set_xlabel("step"), ax[1].set_title("dev SER UA (label scoring)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m semollama_core train",
                                     description="Align the speech adapter to the frozen LLM (behavioural alignment).")
    parser.add_argument("manifest", help="manifest with train and dev splits")
    parser.add_argument("--out", required=True, help="run folder: adapter/, checkpoint/, log.csv, loss_curve.png")
    parser.add_argument("--targets", default=None, help="shared folder for target and feature caches (default: --out)")
    parser.add_argument("--resume", action="store_true", help="continue from --out/checkpoint")
    for f in TrainOptions.__dataclass_fields__.values():
        parser.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    args = parser.parse_args(argv)
    options = TrainOptions(**{k: getattr(args, k) for k in TrainOptions.__dataclass_fields__})
    if options.mode not in ("emotion", "neutral"):
        raise ValueError("--mode must be emotion or neutral.")
    adapter = train(args.manifest, args.out, options, targets_dir=args.targets, resume=args.resume)
    from .export import record_run

    record_run(args.manifest, Path(args.out), ["python", "-m", "semollama_core", "train", *argv])
    print(json.dumps({"adapter": str(adapter)}))
    return 0

