"""The benchmark's command-line contract on a real --quick run, and the llama.cpp peer's
embedding input against its own token input (when llama-cpp-python is installed)."""
import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONTRACT = {"tokens_per_s": ("ours", "llama_cpp", "ratio_to_llama_cpp"),
            "end_to_end_s": ("speech_llm", "cascade"),
            "batch_ser_utt_per_s": ("1", "4", "16"),
            "llm_footprint_mb": ("nf4", "none")}
STAGES = ("audio_load", "asr", "backbone", "adapter", "speech_llm_time_to_first_token", "cascade_time_to_first_token",
          "speech_llm_end_to_end", "cascade_end_to_end")


def bench(*args, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eval.bench", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "nested" / "bench.json"
    run = bench("--quick", "--out", out)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(out.read_text())


def test_quick_run_fills_the_contract(quick_report):
    for section, keys in CONTRACT.items():
        assert set(keys) <= set(quick_report[section]), section
    for section in ("end_to_end_s", "batch_ser_utt_per_s", "llm_footprint_mb"):
        assert all(quick_report[section][k] > 0 for k in CONTRACT[section]), section
    assert quick_report["tokens_per_s"]["ours"] > 0
    assert all(quick_report["stages_s"][stage] > 0 for stage in STAGES)
    assert quick_report["llm_footprint_mb"]["nf4"] < quick_report["llm_footprint_mb"]["none"]
    machine = quick_report["machine"]
    assert machine["cpu_count"] >= 1 and machine["threads"] >= 1 and machine["cpu_model"]
    meta = quick_report["meta"]  # every eval JSON's meta (DESIGN.md), tied to the adapter that ran
    assert {"adapter_sha256", "manifest_sha256", "commit", "machine", "command", "date"} <= set(meta)
    shipped = REPO / "assets" / "speech_llm" / "adapter.safetensors"
    assert meta["adapter_sha256"] == hashlib.sha256(shipped.read_bytes()).hexdigest()


def test_ratio_matches_the_two_rates_or_is_null(quick_report):
    rates = quick_report["tokens_per_s"]
    if rates["llama_cpp"] is None:  # llama-cpp-python is optional (requirements-bench.txt)
        assert rates["ratio_to_llama_cpp"] is None
        assert any("llama.cpp" in note for note in quick_report["notes"])
    else:
        assert rates["llama_cpp"] > 0
        assert math.isclose(rates["ratio_to_llama_cpp"], rates["ours"] / rates["llama_cpp"], rel_tol=1e-2)
        assert quick_report["goals"]["generation_at_least_half_of_llama_cpp"]["met"] == (
            rates["ratio_to_llama_cpp"] >= 0.5)


def test_help_and_bad_output_folder(tmp_path):
    assert bench("--help").returncode == 0
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    run = bench("--quick", "--out", blocker / "bench.json", timeout=60)
    assert run.returncode != 0
    assert run.stderr.strip().count("\n") == 0 and run.stderr.startswith("error:") and "not a folder" in run.stderr
    assert bench("--repeats", "0", "--out", tmp_path / "b.json", timeout=60).returncode != 0


def test_llama_cpp_reads_spliced_embeddings_like_token_ids(system_fp32):
    """The LLM's own token embeddings fed as input embeddings must decode exactly as the token ids do."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (requirements-bench.txt) is not installed")
    from semollama_core import llama_cpp_problem

    if llama_cpp_problem() is not None:  # a build that faults on this CPU is not the code under test
        pytest.skip(llama_cpp_problem())
    import torch

    from eval.bench import GREEDY_SYSTEM_PROMPT, greedy_prompt
    from eval.llama_cpp_peer import LlamaCppSpeechLLM

    peer = LlamaCppSpeechLLM(system_fp32, n_threads=torch.get_num_threads())
    try:
        prompt, ids = greedy_prompt(system_fp32)
        from_embeddings = peer.run(prompt, max_new_tokens=10, system_prompt=GREEDY_SYSTEM_PROMPT)
        from_ids = peer.model.generate_from_tokens(ids, 10, system_fp32.stop_ids)
        assert from_ids.token_ids and from_embeddings.token_ids == from_ids.token_ids
        with pytest.raises(ValueError, match="inputs_embeds must be"):
            peer.model.generate_from_embeddings(torch.zeros(3, 7).numpy(), 4, system_fp32.stop_ids)
    finally:
        peer.close()
