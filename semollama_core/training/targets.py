"""Alignment targets: what the frozen LLM answers when the text states the emotion.

For every (transcript, emotion) the main target is the greedy answer to the
emotion-conditioned prompt; ASR, SER and speaking-style captioning targets follow the
paper's further tasks; emotion-free answers serve the neutral_aligned ablation. Targets
are cached under a fingerprint of the LLM, prompts and decoding settings, appended batch
by batch so an interrupted run resumes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from ..model import prompts
from ..config import QUANTIZATIONS
from ..model.generation import DecodingOptions

TASKS_EMOTION = ("respond", "ser", "asr", "caption")   # the speech_llm encoder's tasks
TASKS_NEUTRAL = ("respond_neutral", "asr")             # AudioChatLlama-style, no emotion anywhere
# greedy, part of the cache fingerprint; without the loop guard, as the shipped adapter's targets were written
TARGET_DECODING = DecodingOptions(max_new_tokens=40, end_on_repeat=False)
# Answers are cut per task: SER needs the named emotion and a few words, captions a sentence.
TARGET_TOKENS = {"respond": 32, "respond_neutral": 32, "ser": 12, "caption": 24}


@dataclass(frozen=True)
class TargetSpec:
    """One text prompt whose greedy answer is a target; `key` identifies it in the cache."""
    task: str
    key: str
    user_turn: str
    assistant_start: str = ""


def target_key(task: str, transcript: str, emotion: str | None = None, prosody: str | None = None) -> str:
    return json.dumps([task, " ".join(transcript.split()), emotion, prosody], ensure_ascii=False)


def prosody_phrase(emotion: str, describe: dict) -> str:
    """Coarse words for the measured prosody; the caption target is conditioned on them."""
    rng = describe.get("f0_range_st", 0.0)
    pitch = "a wide, lively pitch range" if rng > 7 else "a flat, narrow pitch range" if rng < 3.5 else "a moderate pitch range"
    pace = {"happy": "a quick pace", "angry": "a fast, forceful pace", "sad": "a slow pace"}.get(emotion, "an even pace")
    loud = {"angry": "a loud, tense voice", "sad": "a soft, quiet voice", "happy": "a bright voice"}.get(emotion, "a steady voice")
    return f"{pitch}, {pace} and {loud}"


def specs_for(transcript: str, emotion: str, prosody: str | None, tasks: tuple[str, ...]) -> list[TargetSpec]:
    out = []
    for task in tasks:
        if task == "respond":
            out.append(TargetSpec(task, target_key(task, transcript, emotion), prompts.text_turn(transcript, emotion)))
        elif task == "respond_neutral":
            out.append(TargetSpec(task, target_key(task, transcript), prompts.text_turn(transcript)))
        elif task == "ser":
            out.append(TargetSpec(task, target_key(task, transcript, emotion), prompts.ser_text_turn(transcript, emotion),
                                  f"{prompts.SER_ANSWER_PREFIX} {emotion}"))
        elif task == "caption":
            out.append(TargetSpec(task, target_key(task, transcript, emotion, prosody),
                                  prompts.caption_text_turn(transcript, emotion, prosody or "")))
        elif task != "asr":  # ASR's answer is the transcript itself
            raise ValueError(f"Unknown alignment task {task!r}.")
    return out


def fingerprint(llm_name: str, quantization: str, system_prompt: str | None, options: DecodingOptions) -> str:
    """Changes whenever the LLM, the prompts or the decoding settings change.

    The prompts enter as rendered examples of every task, so editing unrelated code in
    prompts.py keeps the cache, while any change to what the LLM reads invalidates it.
    """
    examples = [spec.user_turn + "|" + spec.assistant_start
                for spec in specs_for("example", "sad", "a narrow pitch range", TASKS_EMOTION + TASKS_NEUTRAL)]
    parts = [llm_name, quantization, system_prompt or prompts.DEFAULT_SYSTEM_PROMPT,
             *examples, json.dumps(_decoding_settings(options), sort_keys=True), json.dumps(TARGET_TOKENS, sort_keys=True)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _decoding_settings(options: DecodingOptions) -> dict:
    """The settings that shape a target; the loop guard only when on (targets written before
    it existed keep their fingerprint)."""
    settings = asdict(options)
    if not settings["end_on_repeat"]:
        del settings["end_on_repeat"]
    return settings


class TargetCache:
    """Append-only JSONL of {key, task, text}; lines from a crashed write are ignored."""

    def __init__(self, folder: str | os.PathLike, fp: str):
        self.path = Path(folder) / f"targets-{fp}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.targets: dict[str, str] = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                    self.targets[row["key"]] = row["text"]
                except (json.JSONDecodeError, KeyError):
                    continue

    def add(self, rows: list[tuple[TargetSpec, str]]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            for spec, text in rows:
                f.write(json.dumps({"key": spec.key, "task": spec.task, "text": text}, ensure_ascii=False) + "\n")
                self.targets[spec.key] = text
            f.flush()
            os.fsync(f.fileno())

    def get(self, key: str) -> str | None:
        return self.targets.get(key)


def generate_targets(system, specs: list[TargetSpec], cache: TargetCache, options: DecodingOptions,
                     batch_size: int = 32) -> None:
    """Greedy answers for every spec not yet cached, batched per task, appended as they come."""
    from dataclasses import replace

    from ..model.pipeline import PromptInput

    todo = sorted({s.key: s for s in specs if cache.get(s.key) is None}.values(), key=lambda s: (s.task, len(s.user_turn)))
    bar = tqdm(total=len(todo), desc="targets", unit="prompt")
    for task in sorted({s.task for s in todo}):
        group = [s for s in todo if s.task == task]
        task_options = replace(options, max_new_tokens=min(options.max_new_tokens, TARGET_TOKENS.get(task, 40)))
        for start in range(0, len(group), batch_size):
            batch = group[start:start + batch_size]
            # A text prompt is a text_only PromptInput whose transcript is the whole user turn.
            texts = system.generate([PromptInput("text_only", transcript=s.user_turn, instruction="") for s in batch],
                                    task_options, assistant_start=batch[0].assistant_start if task != "ser" else "")  \
                if task != "ser" else _generate_ser(system, batch, task_options)
            cache.add(list(zip(batch, texts)))
            bar.update(len(batch))
    bar.close()


def _generate_ser(system, batch: list[TargetSpec], options: DecodingOptions) -> list[str]:
    """SER answers are forced to start with "You sound <label>"; rows share that start per label."""
    from ..model.pipeline import PromptInput

    out: dict[str, str] = {}
    for start in sorted({s.assistant_start for s in batch}):
        rows = [s for s in batch if s.assistant_start == start]
        texts = system.generate([PromptInput("text_only", transcript=s.user_turn, instruction="") for s in rows],
                                options, assistant_start=start)
        out.update({s.key: _join(start, t) for s, t in zip(rows, texts)})
    return [out[s.key] for s in batch]


def _join(start: str, continuation: str) -> str:
    if not continuation:
        return start + "."
    glue = "" if continuation[0] in ",.!?;:" else " "
    return start + glue + continuation


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m semollama_core targets",
                                     description="Generate alignment targets with the frozen LLM (cached, resumable).")
    parser.add_argument("manifest")
    parser.add_argument("--out", required=True, help="target cache folder")
    parser.add_argument("--splits", default="train,dev")
    parser.add_argument("--tasks", default=",".join(TASKS_EMOTION + ("respond_neutral",)))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=TARGET_DECODING.max_new_tokens)
    parser.add_argument("--quantization", default="bf16", choices=QUANTIZATIONS)
    args = parser.parse_args(argv)
    from ..config import SEmoConfig
    from ..model.pipeline import load_system

    config = SEmoConfig.from_env(quantization=args.quantization, adapter=None)
    system = load_system(config)
    options = DecodingOptions(max_new_tokens=args.max_new_tokens, end_on_repeat=TARGET_DECODING.end_on_repeat)
    cache = TargetCache(args.out, fingerprint(config.llm, config.quantization, config.system_prompt, options))
    specs = collect_specs(args.manifest, args.splits.split(","), tuple(args.tasks.split(",")))
    generate_targets(system, specs, cache, options, args.batch_size)
    print(json.dumps({"cache": str(cache.path), "targets": len(cache.targets), "specs": len(specs)}))
    return 0


def collect_specs(manifest: str, splits: list[str], tasks: tuple[str, ...]) -> list[TargetSpec]:
    from ..model.audio import load_audio
    from ..corpus.manifest import iter_manifest
    from ..model.prosody import describe_prosody

    specs = []
    for utt in iter_manifest(manifest, require_emotion=True):
        if utt.split in splits and utt.transcript:
            phrase = prosody_phrase(utt.emotion, describe_prosody(load_audio(utt.audio_path))) if "caption" in tasks else None
            specs += specs_for(utt.transcript, utt.emotion, phrase, tasks)
    return specs
