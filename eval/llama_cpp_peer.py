"""The llama.cpp peer of the benchmark: the same GGUF file the embedded LLM is converted from,
run by llama.cpp, timed and compared with the torch decoder. The decoder itself lives in the
library (`semollama_core.model.llama_cpp_decode`, the default decoder where
llama-cpp-python is installed); its names stay importable here for eval's callers.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Callable

from semollama_core import (GreedyRun, LlamaCppModel, LlamaCppSpeechLLM, LlamaCppUnavailable, embedded_gguf_path,
                            llama_cpp_module, llama_cpp_problem)

from .timing import median_or_none, median_seconds, rounded

__all__ = ["GreedyRun", "LlamaCppModel", "LlamaCppSpeechLLM", "LlamaCppUnavailable", "embedded_gguf_path",
           "llama_cpp_module", "llama_cpp_report", "common_prefix_share"]


def llama_cpp_report(system, clip_path: Path, clips: list, features: list, torch_runs: tuple[dict, dict],
                     torch_text_answers: dict[str, str], threads: int, options, greedy_ids: list[int]) -> dict:
    """llama.cpp on the same GGUF and threads: the greedy text prompt, speech_llm from spliced
    embeddings, and agreement with the torch decoder."""
    try:
        version = getattr(llama_cpp_module(), "__version__", None)
    except LlamaCppUnavailable as e:
        return {"available": False, "note": f"not measured: {e}"}
    problem = llama_cpp_problem()
    if problem is not None:  # a build that faults on this CPU would take the bench down with it
        return {"available": False, "note": f"not measured: {problem}"}
    own = system.llama_cpp is None  # the default system already holds the model when it decodes with it
    model = LlamaCppModel(n_threads=threads) if own else system.llama_cpp
    try:
        peer = LlamaCppSpeechLLM(system, model=model)
        ids = greedy_ids
        text = median_runs(lambda: model.generate_from_tokens(ids, options.max_new_tokens, system.stop_ids),
                            options)
        text["answer"] = peer.decode(model.generate_from_tokens(ids, options.max_new_tokens, system.stop_ids))
        text["same_answer_as_torch"] = {q: answer == text["answer"] for q, answer in torch_text_answers.items()}
        speech = _speech_on_llama_cpp(peer, clip_path, options)
        agreement = _agreement(peer, clips, features, *torch_runs, options)
        return {"available": True, "version": version, "gguf": str(model.path), "threads": model.n_threads,
                "footprint_mb": round(model.footprint_mb(), 1), "greedy_text_prompt": text,
                "speech_llm": speech, **agreement}
    finally:
        if own:
            model.close()


def median_runs(run: Callable[[], object], options) -> dict:
    """Medians over GreedyRun results; time to first token counts everything before the first pick."""
    if options.warm_each:
        run()
    results = []
    for _ in range(options.repeats):
        start = time.perf_counter()
        result = run()
        results.append((time.perf_counter() - start, result))
    return rounded({"time_to_first_token_s": statistics.median(total - r.decode_s for total, r in results),
                     "tokens": int(statistics.median(len(r.token_ids) for _, r in results)),
                     "tokens_per_s": median_or_none(r.tokens_per_s for _, r in results),
                     "total_s": statistics.median(total for total, _ in results)})


def _speech_on_llama_cpp(peer, clip_path: Path, options) -> dict:
    from semollama_core import PromptInput

    system = peer.system
    features = system.features(system.load(str(clip_path)))
    prompt = PromptInput("speech_llm", features)
    figures = median_runs(lambda: peer.run(prompt, options.max_new_tokens), options)

    def end_to_end():
        clip = system.load(str(clip_path))
        return peer.run(PromptInput("speech_llm", system.features(clip)), options.max_new_tokens)

    figures["end_to_end_s"] = round(median_seconds(end_to_end, options), 4)
    figures["answer"] = peer.generate(prompt, options.max_new_tokens)
    return figures


def _agreement(peer, clips: list, features: list, torch_answers: dict[str, list[str]],
               torch_labels: dict[str, list[str]], options) -> dict:
    """How often llama.cpp's greedy speech_llm answer, and its SER label, equal the torch ones, clip by clip."""
    from semollama_core import PromptInput, unpadded_rows

    system = peer.system
    ours = [peer.generate(PromptInput("speech_llm", f), options.max_new_tokens) for f in features]
    label_ids = system.label_token_ids(system.config.labels)
    start = time.perf_counter()
    rows = [unpadded_rows(system.encode_ser_prompts([PromptInput("speech_llm", f)]))[0] for f in features]
    labels = [system.config.labels[int(peer.model.label_log_likelihoods(row, label_ids).argmax())] for row in rows]
    ser_seconds = time.perf_counter() - start
    rates = {f"torch_{q}": _share(answers, ours) for q, answers in torch_answers.items()}
    prefixes = {f"torch_{q}": statistics.mean(common_prefix_share(a, b) for a, b in zip(answers, ours))
                for q, answers in torch_answers.items()}
    examples = [{"clip": c.audio.name, "llama_cpp": ours[i], **{f"torch_{q}": a[i] for q, a in torch_answers.items()}}
                for i, c in enumerate(clips[:3])]
    truth = [c.emotion for c in clips]
    accuracy = {name: _share(found, truth) if all(truth) else None
                for name, found in {**{f"torch_{q}": v for q, v in torch_labels.items()}, "llama_cpp": labels}.items()}
    return {"greedy_agreement": {"clips": len(clips), "same_answer_rate": rounded(rates),
                                 "mean_common_prefix_share": rounded(prefixes), "examples": examples},
            "ser_agreement": {"clips": len(clips), "labels": list(system.config.labels),
                              "same_label_rate": rounded({f"torch_{q}": _share(v, labels)
                                                           for q, v in torch_labels.items()}),
                              "accuracy": rounded(accuracy),
                              "llama_cpp_utt_per_s_from_features": round(len(clips) / ser_seconds, 3),
                              "note": "SEmoLlama.predict_emotions runs on torch whatever the decoder: its batched "
                                      "prompt pass reads prompts faster than llama.cpp one row at a time here"}}


def _share(a: list, b: list) -> float:
    return sum(x == y for x, y in zip(a, b)) / max(len(a), 1)


def common_prefix_share(a: str, b: str) -> float:
    """Share of the longer answer's words before the two answers first differ (1.0: identical)."""
    x, y = a.split(), b.split()
    same = next((i for i, (u, v) in enumerate(zip(x, y)) if u != v), min(len(x), len(y)))
    return same / max(len(x), len(y), 1)
