"""Speed and memory, measured in one run on one machine with one thread count.

- stages for a 3 s espeak-ng clip, `speech_llm` against `cascade`: audio load, ASR,
  standalone SER, backbone, adapter, time to first token, tokens per second, end to end;
- generation speed of the default configuration (decoder auto: llama.cpp where
  llama-cpp-python is installed), of the torch decoder at NF4 and in full precision, against
  llama.cpp on the same GGUF file, same threads, same greedy prompt (token ids);
- speech_llm decoded by llama.cpp from SEmoLlama's own spliced embeddings
  (semollama_core/model/llama_cpp_decode.py), and, on test-split clips of the synthetic corpus, how
  often its greedy answers and its SER labels equal the torch ones;
- LLM memory footprint NF4 against full precision; batch SER throughput at 1, 4, 16.

Every measured call runs once untimed first (warm); figures are medians of --repeats runs. The
two systems' whole turns alternate in at least 9 pairs, and their paired difference carries a
95 % bootstrap interval.

    python -m eval.bench --out FILE.json [--repeats 5] [--quick] [--threads N] [--agreement-clips 32]
"""
from __future__ import annotations

import itertools
import os
import platform
import resource
import shutil
import statistics
import subprocess
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .common import (EvalError, argument_parser, check_out_path, metadata, positive_int, run_cli, run_meta,
                     write_json)
from .llama_cpp_peer import llama_cpp_report
from .timing import median_seconds, median_stream, paired_times, rounded

CLIP_SECONDS = 3.0
CLIP_TEXT = "They changed the schedule again, and nobody told me."
# Clips for batch SER (cycled to --ser-utterances): (text, voice, pitch, words per minute).
SER_CLIPS = [("The bank called about my account.", "en-us", 50, 160),
             ("I will see you tomorrow at noon.", "en", 80, 190),
             ("The meeting moved to next week.", "en-us", 25, 120),
             ("They changed the schedule again.", "en", 65, 210)]
# The greedy prompt both engines decode; a story runs to the token budget, so the rate is
# averaged over many tokens.
GREEDY_SYSTEM_PROMPT = "You are a storyteller. Answer with a long, detailed story."
GREEDY_USER_TEXT = "Tell me a story about a lighthouse keeper and a lost cat."
BATCH_SIZES = (1, 4, 16)
GOAL_RATIO_TO_LLAMA_CPP = 0.5
GOAL_SER_UTT_PER_S = 5.0
PAIRED_TURNS = 9             # alternating speech_llm/cascade turn pairs behind the end-to-end difference
AGREEMENT_MANIFEST = Path(__file__).resolve().parent.parent / "data" / "synth" / "manifest.jsonl"


@dataclass(frozen=True)
class BenchOptions:
    repeats: int = 5            # timed repetitions per figure; the median is reported
    max_new_tokens: int = 64    # generation budget (tokens/s, end to end)
    threads: int = 0            # CPU threads for torch, CTranslate2 and llama.cpp; 0: torch's default
    ser_utterances: int = 16    # utterances per batch-SER figure; 0: one batch of each size
    agreement_clips: int = 32   # test clips on which torch and llama.cpp answers and SER labels are compared
    agreement_manifest: Path = AGREEMENT_MANIFEST  # whose test split they come from (else the example clips)
    warm_each: bool = True      # an untimed run before every figure (else the first run of a path is cold)
    respond: bool = True        # also time system.respond (all three answers)

    @classmethod
    def quick(cls, threads: int = 0) -> "BenchOptions":
        """For tests: one cold repetition, short answers, the least work that still fills every figure."""
        return cls(repeats=1, max_new_tokens=12, threads=threads, ser_utterances=0, agreement_clips=1,
                   warm_each=False, respond=False)


# ----------------------------------------------------------------------------- audio

def synthesise(text: str, path: Path, *, voice: str = "en-us", pitch: int = 50, speed: int = 160,
               seconds: float | None = CLIP_SECONDS) -> Path:
    """espeak-ng speech, trimmed or padded with silence to `seconds` so every run times the same length."""
    from semollama_core import SAMPLE_RATE, load_audio, save_wav
    import numpy as np

    if shutil.which("espeak-ng") is None:
        raise EvalError("espeak-ng is not installed (Debian package espeak-ng); the benchmark synthesises its clips.")
    subprocess.run(["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "-w", str(path), text],
                   check=True, capture_output=True)
    if seconds:
        audio = load_audio(path)
        n = int(seconds * SAMPLE_RATE)
        save_wav(path, np.pad(audio[:n], (0, max(0, n - len(audio)))))
    return path


def make_clips(folder: Path) -> tuple[Path, list[Path]]:
    """The 3 s clip of the stage timings, and the distinct clips batch SER cycles through."""
    clip = synthesise(CLIP_TEXT, folder / "clip_3s.wav")
    ser = [synthesise(text, folder / f"ser_{i}.wav", voice=voice, pitch=pitch, speed=speed)
           for i, (text, voice, pitch, speed) in enumerate(SER_CLIPS)]
    return clip, ser


# ----------------------------------------------------------------------------- the machine

def machine_info(threads: int) -> dict:
    import torch

    from semollama_core import cpu_model

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu_model": cpu_model(), "threads": threads, "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "load_average_1_5_15": [round(x, 2) for x in load] if load else None}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# ----------------------------------------------------------------------------- one clip, stage by stage

def turn_answer(system, path: Path, system_name: str, decoding) -> str:
    """A whole turn from audio (SEmoLlama.respond_stream) answered by one system: its answer.
    The LLM's prefix cache is emptied first, so the turn is timed as for a new clip; llama.cpp
    keeps its saved prompt head (the chat's system turn, the same for every clip), as in the app."""
    from semollama_core import TurnDone

    system.prefix_cache.clear()
    for event in system.respond_stream(str(path), systems=(system_name,), options=decoding):
        if isinstance(event, TurnDone):
            return event.result.responses[system_name]
    raise RuntimeError("the turn ended without a result")


def first_token_turn(system, path: Path, system_name: str, decoding) -> str | None:
    """From audio to the first answer token: what a user waits for, whatever the answer's length."""
    from semollama_core import TokenEvent

    system.prefix_cache.clear()
    turn = system.respond_stream(str(path), systems=(system_name,), options=decoding)
    try:
        return next((event.text for event in turn if isinstance(event, TokenEvent)), None)
    finally:
        turn.close()  # the rest of the answer is not timed


def stage_times(system, clip_path: Path, options: BenchOptions,
                notes: list[str]) -> tuple[dict, dict, dict, dict]:
    """(stages_s, end_to_end_s at equal answer lengths, end_to_end_s at natural lengths,
    per-system generation) for one clip on the torch path."""
    from semollama_core import DecodingOptions
    from semollama_core import PromptInput

    decoding = DecodingOptions(max_new_tokens=options.max_new_tokens)
    equal = DecodingOptions(max_new_tokens=options.max_new_tokens, min_new_tokens=options.max_new_tokens)
    clip = system.load(str(clip_path))
    features = system.features(clip)
    turn = system.respond(str(clip_path), max_new_tokens=options.max_new_tokens)  # the cascade's transcript and label
    prompts = {"speech_llm": PromptInput("speech_llm", features),
               "cascade": PromptInput("cascade", transcript=turn.transcript, emotion=turn.cascade_label)}
    stages = {"audio_load": median_seconds(lambda: system.load(str(clip_path)), options),
              "backbone": median_seconds(lambda: system.features(clip, transcribe=False), options),
              "adapter": median_seconds(lambda: system.speech_embeddings([features]), options),
              "asr": median_seconds(lambda: system.transcribe(clip), options)}
    if system.standalone_ser is not None:
        stages["standalone_ser"] = median_seconds(lambda: system.standalone_emotion(clip), options)
    else:
        notes.append("No standalone SER model shipped: the cascade used the LLM's own SER label.")
    generation = {}
    for name, prompt in prompts.items():
        # as in a turn: the emotion question has just read the clip's speech prompt (prefix cache)
        system.predict_emotions([PromptInput("speech_llm", features)])
        timing = median_stream(lambda: system.stream(prompt, decoding), options)
        generation[name] = {**rounded(asdict(timing)), "answer": system.generate([prompt], decoding)[0]}
        stages[f"{name}_time_to_first_token"] = timing.time_to_first_token_s
        stages[f"{name}_generate"] = median_seconds(lambda: system.generate([prompt], decoding), options)
    pairs = max(options.repeats, PAIRED_TURNS) if options.warm_each else 1
    end_to_end = paired_times(lambda name: turn_answer(system, clip_path, name, equal), ("speech_llm", "cascade"),
                              pairs, options.warm_each)
    natural = {name: median_seconds(lambda: turn_answer(system, clip_path, name, decoding), options)
               for name in ("speech_llm", "cascade")}
    stages.update({f"{name}_end_to_end": end_to_end[name] for name in ("speech_llm", "cascade")})
    stages.update({f"{name}_end_to_end_natural_length": seconds for name, seconds in natural.items()})
    for name in prompts:
        stages[f"{name}_first_token_from_audio"] = median_seconds(
            lambda: first_token_turn(system, clip_path, name, decoding), options)
    return stages, end_to_end, natural, generation


def respond_timings(system, clip_path: Path, options: BenchOptions) -> dict:
    """Medians of system.respond's own stage timings (all three answers for one clip)."""
    if options.warm_each:
        system.respond(str(clip_path), max_new_tokens=options.max_new_tokens)
    runs = [system.respond(str(clip_path), max_new_tokens=options.max_new_tokens).timings_s
            for _ in range(options.repeats)]
    return {stage: statistics.median(run[stage] for run in runs) for stage in runs[0]}


# ----------------------------------------------------------------------------- batch SER

def batch_ser(system, clips: list[Path], options: BenchOptions) -> tuple[dict, dict]:
    """Utterances per second of system.predict_emotions at each batch size: from audio, and from features."""
    from semollama_core import PromptInput

    from .common import batches

    features = {p: system.features(system.load(str(p)), transcribe=False) for p in clips}  # SER reads no words
    end_to_end, from_features = {}, {}
    for size in BATCH_SIZES:
        paths = [clips[i % len(clips)] for i in range(options.ser_utterances or size)]

        def run_from_audio():
            for chunk in batches(paths, size):
                feats = system.features_many([system.load(str(p)) for p in chunk], transcribe=False)
                system.predict_emotions([PromptInput("speech_llm", f) for f in feats])

        def run_from_features():
            for chunk in batches(paths, size):
                system.predict_emotions([PromptInput("speech_llm", features[p]) for p in chunk])

        end_to_end[str(size)] = len(paths) / median_seconds(run_from_audio, options)
        from_features[str(size)] = len(paths) / median_seconds(run_from_features, options)
    return end_to_end, from_features


# ----------------------------------------------------------------------------- generation speed

def greedy_prompt(system) -> tuple[object, list[int]]:
    """The prompt both engines decode: as a PromptInput for SEmoLlama, as token ids for llama.cpp."""
    from semollama_core import prompts
    from semollama_core import PromptInput

    prompt = PromptInput("text_only", transcript=GREEDY_USER_TEXT)
    text = prompts.render_chat(system.tokenizer, prompts.text_turn(GREEDY_USER_TEXT), GREEDY_SYSTEM_PROMPT)
    ids = system.tokenizer(text, add_special_tokens=False)["input_ids"]
    spliced = system.encode_prompts([prompt], system_prompt=GREEDY_SYSTEM_PROMPT)
    if int(spliced.attention_mask.sum()) != len(ids):  # the two engines must read the same prompt
        raise RuntimeError(f"The greedy prompt has {len(ids)} token ids but SEmoLlama spliced "
                           f"{int(spliced.attention_mask.sum())} positions.")
    return prompt, ids


def generation_speed(system, options: BenchOptions) -> dict:
    """The greedy prompt streamed by the system's own decoder (system.decoder)."""
    from semollama_core import DecodingOptions

    prompt, ids = greedy_prompt(system)
    decoding = DecodingOptions(max_new_tokens=options.max_new_tokens)
    timing = median_stream(lambda: system.stream(prompt, decoding, GREEDY_SYSTEM_PROMPT), options)
    answer = system.generate([prompt], decoding, GREEDY_SYSTEM_PROMPT)[0]
    return {**rounded(asdict(timing)), "prompt_tokens": len(ids), "decoder": system.describe()["decoder"],
            "answer": answer}


@dataclass(frozen=True)
class AgreementClip:
    audio: Path
    emotion: str | None


def agreement_clips(count: int, manifest: Path, fallback: list[Path]) -> tuple[list[AgreementClip], str]:
    """`count` test-split clips of the manifest, the emotions in turn, each emotion's clips
    spread evenly over the manifest (so sentences and voices vary); without the manifest, the
    shipped example clips, else the synthesised ones."""
    import numpy as np

    from semollama_core import ASSETS
    from semollama_core import iter_manifest

    if manifest.is_file():
        by_emotion: dict[str, list] = {}
        for u in iter_manifest(manifest, require_emotion=True):
            if u.split == "test":
                by_emotion.setdefault(u.emotion, []).append(u)
        if by_emotion:
            each = -(-count // len(by_emotion))
            spread = [[rows[int(i)] for i in np.linspace(0, len(rows) - 1, min(each, len(rows)))]
                      for rows in by_emotion.values()]
            chosen = [u for turn in itertools.zip_longest(*spread) for u in turn if u is not None][:count]
            total = sum(map(len, by_emotion.values()))
            return [AgreementClip(Path(u.audio_path), u.emotion) for u in chosen], \
                f"{manifest} (test split: {len(chosen)} of {total} clips, emotions in turn)"
    found = sorted((ASSETS / "examples").glob("*.wav")) or list(dict.fromkeys(fallback))
    return [AgreementClip(p, None) for p in found[:count]], "example clips (no test-split manifest)"


def torch_answers(systems: dict, features: list, options: BenchOptions) -> tuple[dict, dict]:
    """Greedy speech_llm answers and SER labels of each torch system on the agreement clips."""
    from semollama_core import DecodingOptions
    from semollama_core import PromptInput

    from .common import batches

    decoding = DecodingOptions(max_new_tokens=options.max_new_tokens)
    answers, labels = {}, {}
    for name, system in systems.items():
        answers[name] = [system.generate([PromptInput("speech_llm", f)], decoding)[0] for f in features]
        labels[name] = [p.label for chunk in batches(features, 16)
                        for p in system.predict_emotions([PromptInput("speech_llm", f) for f in chunk])]
    return answers, labels


# ----------------------------------------------------------------------------- the whole run

def run_bench(options: BenchOptions) -> dict:
    import torch

    from semollama_core import SEmoConfig
    from semollama_core import SEmoLlama, load_system

    notes: list[str] = []
    threads = options.threads or torch.get_num_threads()
    base = SEmoConfig.from_env(threads=threads)
    defaults = SEmoConfig()
    for name in ("quantization", "decoder"):
        if getattr(base, name) != getattr(defaults, name):
            notes.append(f"SEMOLLAMA settings ask for {name} {getattr(base, name)}; 'ours' is still the default, "
                         f"{getattr(defaults, name)}.")
    with tempfile.TemporaryDirectory(prefix="semollama-bench-") as folder:
        clip, ser_paths = make_clips(Path(folder))
        clips, clips_source = agreement_clips(options.agreement_clips, options.agreement_manifest, ser_paths)
        default = load_system(base.replace(quantization=defaults.quantization, decoder=defaults.decoder))
        nf4 = default if default.decoder == "torch" else SEmoLlama(default.config.replace(decoder="torch"),
                                                                     llm=default.llm)
        machine = machine_info(threads)
        stages, end_to_end, natural, per_system = stage_times(default, clip, options, notes)
        respond = respond_timings(default, clip, options) if options.respond else {}
        ser_from_audio, ser_from_features = batch_ser(default, ser_paths, options)
        features = [default.features(default.load(str(c.audio))) for c in clips]
        generation = {"ours": generation_speed(default, options)}
        generation["nf4"] = generation["ours"] if nf4 is default else generation_speed(nf4, options)
        answers, labels = torch_answers({"nf4": nf4}, features, options)
        footprint = {"nf4": default.llm.footprint_mb()}
        full = load_system(base.replace(quantization="none", decoder="torch"))
        generation["none"] = generation_speed(full, options)
        more_answers, more_labels = torch_answers({"none": full}, features, options)
        footprint["none"] = full.llm.footprint_mb()
        del full
        torch_runs = ({**answers, **more_answers}, {**labels, **more_labels})
        peer = llama_cpp_report(default, clip, clips, features, torch_runs,
                                {q: generation[q]["answer"] for q in ("nf4", "none")}, threads, options,
                                greedy_prompt(default)[1])
        peer["agreement_clips_from"] = clips_source
        describe = metadata(None, default)
    notes.append(f"'ours' is the default configuration; it decodes with {generation['ours']['decoder']}.")
    if not default.trained:
        notes.append("The speech adapter is untrained (fresh): speech_llm answers are noise, so their "
                     "length, and the speech_llm generate/end-to-end times, are not those of a trained model.")
    report = assemble(options, machine, stages, (end_to_end, natural), per_system, respond, ser_from_audio,
                      ser_from_features, generation, footprint, peer, notes, describe)
    return {**report, "meta": run_meta(None, default)}  # the `meta` every eval JSON carries (DESIGN.md)


def assemble(options, machine, stages, end_to_end, per_system, respond, ser_from_audio, ser_from_features,
             generation, footprint, peer, notes, describe) -> dict:
    end_to_end, natural = end_to_end
    rates = {name: generation[name]["tokens_per_s"] for name in ("ours", "nf4", "none")}
    peer_text = peer.get("greedy_text_prompt", {})
    peer_rate = peer_text.get("tokens_per_s")
    peer_speech = peer.get("speech_llm", {})
    if not peer["available"]:
        notes.append(f"llama.cpp: {peer['note']}")
    ratio = _ratio(rates["ours"], peer_rate)
    result = {
        "tokens_per_s": {"ours": rates["ours"], "llama_cpp": peer_rate, "ratio_to_llama_cpp": _round(ratio),
                         "decoder_ours": generation["ours"]["decoder"],
                         "torch_nf4": rates["nf4"],
                         "ratio_torch_nf4_to_llama_cpp": _round(_ratio(rates["nf4"], peer_rate)),
                         "torch_none": rates["none"],
                         "ratio_torch_none_to_llama_cpp": _round(_ratio(rates["none"], peer_rate)),
                         "speech_llm_llama_cpp_decode": peer_speech.get("tokens_per_s")},
        "time_to_first_token_s": {"ours": generation["ours"]["time_to_first_token_s"],
                                  "torch_nf4": generation["nf4"]["time_to_first_token_s"],
                                  "torch_none": generation["none"]["time_to_first_token_s"],
                                  "llama_cpp": peer_text.get("time_to_first_token_s")},
        "end_to_end_s": {**rounded(end_to_end), "speech_llm_llama_cpp_decode": peer_speech.get("end_to_end_s"),
                         "answer_tokens": options.max_new_tokens},
        "end_to_end_natural_length_s": {**rounded(natural),
                                        **{f"{name}_tokens": per_system[name]["tokens"] for name in natural}},
        "stages_s": rounded(stages),
        "generation_by_system": per_system,
        "greedy_text_prompt": {**generation, "system_prompt": GREEDY_SYSTEM_PROMPT, "user": GREEDY_USER_TEXT},
        "batch_ser_utt_per_s": rounded(ser_from_audio, 3),
        "batch_ser_from_features_utt_per_s": rounded(ser_from_features, 3),
        "llm_footprint_mb": rounded(footprint, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "respond_timings_s": rounded(respond),
        "llama_cpp": peer,
        "goals": goals(ratio, _ratio(peer_speech.get("tokens_per_s"), peer_rate), stages, ser_from_audio,
                       generation["ours"]["decoder"], end_to_end),
        "machine": machine,
        "settings": {**asdict(options), "agreement_manifest": str(options.agreement_manifest),
                     "threads": machine["threads"], "clip_seconds": CLIP_SECONDS,
                     "clip_text": CLIP_TEXT, "batch_sizes": list(BATCH_SIZES),
                     "statistic": f"median of {options.repeats} run(s)"
                                  + (" after an untimed warm-up run" if options.warm_each else ", no warm-up (cold)")},
        "notes": notes,
        "metadata": describe,
    }
    return result


def goals(ratio, ratio_via_llama_cpp_decode, stages, ser_from_audio, decoder: str, end_to_end: dict) -> dict:
    best_ser = max(ser_from_audio.values())
    speech, cascade = stages["speech_llm_end_to_end"], stages["cascade_end_to_end"]
    speech_first, cascade_first = stages["speech_llm_first_token_from_audio"], stages["cascade_first_token_from_audio"]
    return {
        "generation_at_least_half_of_llama_cpp": {
            "target_ratio": GOAL_RATIO_TO_LLAMA_CPP, "ratio": _round(ratio),
            "met": None if ratio is None else ratio >= GOAL_RATIO_TO_LLAMA_CPP,
            "scope": f"default configuration (NF4, decoder auto: {decoder}) on the greedy text prompt",
            "ratio_speech_llm_via_llama_cpp_decode": _round(ratio_via_llama_cpp_decode)},
        "speech_llm_faster_than_cascade": {
            "speech_llm_s": round(speech, 4), "cascade_s": round(cascade, 4), "met": speech < cascade,
            "speech_llm_first_token_from_audio_s": round(speech_first, 4),
            "cascade_first_token_from_audio_s": round(cascade_first, 4),
            "difference_s": end_to_end["speech_llm_minus_cascade_mean"],
            "difference_ci95": end_to_end["speech_llm_minus_cascade_ci95"], "pairs": end_to_end["pairs"],
            "met_with_95_interval_below_zero": bool(end_to_end["speech_llm_minus_cascade_ci95"]
                                                    and end_to_end["speech_llm_minus_cascade_ci95"][1] < 0),
            "met_to_first_token": speech_first < cascade_first,
            "speech_llm_natural_length_s": round(stages["speech_llm_end_to_end_natural_length"], 4),
            "cascade_natural_length_s": round(stages["cascade_end_to_end_natural_length"], 4),
            "scope": "a whole turn from audio, each system answering the same number of tokens "
                     "(settings.max_new_tokens; stop tokens held back), the LLM's prefix cache emptied "
                     "before each turn (a new clip; llama.cpp keeps its saved system turn, as the app does); "
                     "the two systems' turns alternate in pairs, and difference_s is the "
                     "mean paired difference speech_llm - cascade with a 95 % bootstrap interval over the pairs. "
                     "At natural lengths (end_to_end_natural_length_s) "
                     "the time follows each answer's length (generation_by_system.*.tokens)"},
        "batch_ser_at_least_5_utt_per_s": {"target": GOAL_SER_UTT_PER_S, "best_utt_per_s": round(best_ser, 3),
                                           "met": best_ser >= GOAL_SER_UTT_PER_S},
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


# ----------------------------------------------------------------------------- command line

def check_out_folder(out: Path) -> None:
    """Fail before any model loads when the output cannot be written."""
    folder = out.parent if str(out.parent) else Path(".")
    existing = next(p for p in [folder, *folder.parents, Path(".")] if p.exists())
    if not existing.is_dir():
        raise EvalError(f"--out {out}: {existing} is not a folder.")
    if not os.access(existing, os.W_OK):
        raise EvalError(f"--out {out}: the folder {existing} is not writable.")


def main(argv: list[str]) -> int:
    parser = argument_parser("python -m eval.bench", "Measure speed and memory (speech_llm against cascade, "
                             "SEmoLlama against llama.cpp on the same GGUF, NF4 against full precision, "
                             "batch SER) and write them as JSON.")
    parser.add_argument("--out", required=True, help="the JSON file to write")
    parser.add_argument("--repeats", type=positive_int, default=BenchOptions.repeats,
                        help="timed repetitions per figure; medians are reported (default %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="for tests: one cold repetition, 12 new tokens, one batch per SER batch size, "
                             "1 agreement clip, no respond timings")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="CPU threads for every engine (default: torch's default)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=None,
                        help=f"generation budget (default {BenchOptions.max_new_tokens}, 12 with --quick)")
    parser.add_argument("--agreement-clips", type=positive_int, default=None,
                        help=f"test-split clips on which torch and llama.cpp answers and SER labels are compared "
                             f"(default {BenchOptions.agreement_clips}, 1 with --quick)")
    parser.add_argument("--agreement-manifest", type=Path, default=AGREEMENT_MANIFEST,
                        help="manifest whose test split gives those clips; missing: the example clips "
                             "(default data/synth/manifest.jsonl)")
    args = parser.parse_args(argv)
    out = check_out_path(args.out)
    check_out_folder(out)
    options = BenchOptions.quick(args.threads or 0) if args.quick else BenchOptions(repeats=args.repeats,
                                                                                       threads=args.threads or 0)
    if args.max_new_tokens and args.max_new_tokens > 1024:
        raise EvalError(f"--max-new-tokens must be at most 1024, not {args.max_new_tokens}.")
    changes = {"max_new_tokens": args.max_new_tokens, "agreement_clips": args.agreement_clips,
               "agreement_manifest": args.agreement_manifest}
    options = replace(options, **{k: v for k, v in changes.items() if v is not None})
    write_json(out, run_bench(options))
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
