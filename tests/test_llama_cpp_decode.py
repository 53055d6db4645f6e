"""The llama.cpp decoder (semollama_core/llama_cpp_decode.py) on the real embedded model:
its logits and label scores against torch on the same weights, and SEmoLlama's generate,
stream and sampling when it decodes with llama.cpp."""
from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
import torch

from semollama_core.config import ASSETS, ConfigError, SEmoConfig
from semollama_core.model import prompts as prompts_module
from semollama_core.model.generation import DecodingOptions
from semollama_core.model.llama_cpp_decode import (choose_decoder, llama_cpp_importable, llama_cpp_problem, log_softmax,
                                                   token_picker)
from semollama_core.model.pipeline import PromptInput, SEmoLlama, unpadded_rows

pytest.importorskip("llama_cpp", reason="llama-cpp-python (requirements-fast.txt) is not installed")
# A build that faults on this CPU (seen: a native build on a VM) is not the code under test: auto
# falls back to torch there (tests/test_core.py checks that answers still come), these tests skip.
pytestmark = pytest.mark.skipif(llama_cpp_problem() is not None, reason=f"{llama_cpp_problem()}")

TEXTS = ("Tell me about the sea.", "I got the results back today.")


@pytest.fixture(scope="module")
def fast(system_fp32):
    """The fp32 system's LLM, decoded by llama.cpp (the GGUF it was converted from)."""
    system = SEmoLlama(system_fp32.config.replace(decoder="llama_cpp"), llm=system_fp32.llm)
    yield system
    system.llama_cpp.close()


@pytest.fixture(scope="module")
def prompts(system_fp32) -> list[PromptInput]:
    clip = sorted((ASSETS / "examples").glob("*.wav"))[0]
    speech = PromptInput("speech_llm", system_fp32.features(system_fp32.load(str(clip))))
    return [PromptInput("text_only", transcript=t) for t in TEXTS] + [speech]


def test_next_token_logits_agree_with_torch(fast, system_fp32, prompts):
    for prompt in prompts:
        batch = system_fp32.encode_prompts([prompt])
        with torch.no_grad():
            expected = system_fp32.llm.model(inputs_embeds=batch.inputs_embeds).logits[0, -1].float().numpy()
        got = fast.llama_cpp.next_token_logits(unpadded_rows(batch)[0])
        # Q4_1 against fp32: the same choice, or (a near tie) one within 0.5 of torch's best
        assert expected[int(got.argmax())] >= expected.max() - 0.5, prompt.system
        assert np.corrcoef(got, expected)[0, 1] > 0.99, prompt.system


def test_label_scores_agree_with_torch_and_multi_token_labels_are_removed_again(fast, system_fp32, prompts):
    labels = ("neutral", "disgusted", "sad", "disgusted")  # " disgusted" is two tokens
    label_ids = system_fp32.label_token_ids(labels)
    assert len(label_ids[1]) == 2
    row = unpadded_rows(system_fp32.encode_ser_prompts([prompts[-1]]))[0]
    scores = fast.llama_cpp.label_log_likelihoods(row, label_ids)
    assert scores[1] == pytest.approx(scores[3], abs=1e-4)  # the first pass left no trace in the cache
    first, second = label_ids[1]
    step = np.concatenate([row, system_fp32.llm.embed_tokens(torch.tensor([first])).detach().numpy()])
    by_hand = log_softmax(fast.llama_cpp.next_token_logits(row))[first] + \
        log_softmax(fast.llama_cpp.next_token_logits(step))[second]
    assert scores[1] == pytest.approx(by_hand, abs=2e-2)
    torch_scores = [p.log_likelihoods for p in system_fp32.predict_emotions([prompts[-1]], labels[:3])][0]
    assert np.allclose(scores[:3], [torch_scores[l] for l in labels[:3]], atol=1.0)  # seen: within 0.5


def test_greedy_generation_stream_and_batch(fast, prompts):
    assert fast.decoder == "llama_cpp" and "llama.cpp" in fast.describe()["decoder"]
    options = DecodingOptions(max_new_tokens=12)
    batched = fast.generate(prompts, options)
    assert all(batched) and batched == [fast.generate([p], options)[0] for p in prompts]
    assert list(fast.stream(prompts[-1], options))[-1] == batched[-1]
    row = unpadded_rows(fast.encode_prompts([prompts[0]]))[0]
    assert len(list(fast.llama_cpp.tokens(row, 5, fast.stop_ids))) == 5
    first = next(fast.llama_cpp.tokens(row, 5, fast.stop_ids))
    assert list(fast.llama_cpp.tokens(row, 5, [first])) == [first]  # stops at (and on) a stop token
    short = PromptInput("cascade", transcript="The bank called about my account.", emotion="sad")
    tokens = list(fast.llama_cpp.tokens(unpadded_rows(fast.encode_prompts([short]))[0], 64, fast.stop_ids))
    assert tokens[-1] in fast.stop_ids and len(tokens) < 64


def test_interleaved_streams_and_threads_keep_their_own_answers(fast, prompts):
    options = DecodingOptions(max_new_tokens=8)
    alone = [fast.generate([p], options)[0] for p in prompts[:2]]
    a, b = fast.stream(prompts[0], options), fast.stream(prompts[1], options)
    last = [None, None]
    for pair in zip(a, b):  # each step finds the other's state in the KV cache
        last = list(pair)
    assert last == alone
    results = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, fast.generate([prompts[i]], options)[0]))
               for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[0], results[1]] == alone


def test_the_saved_prompt_head_reads_less_and_changes_nothing(fast, system_fp32, prompts):
    """The system turn that prompts share is read once and restored from a saved KV state; the
    logits and answers after it are bit-identical to reading each prompt whole."""
    model = fast.llama_cpp
    rows = [unpadded_rows(fast.encode_prompts([p]))[0] for p in prompts]
    rows.append(unpadded_rows(fast.encode_ser_prompts([prompts[-1]]))[0])
    cold = []
    for row in rows:
        model.forget_head()
        cold.append(model.next_token_logits(row))
    model.forget_head()
    hits = model.head_hits
    order = [0, 1, 3, 2, 1, 0, 3, 2, 2]  # a prompt read twice in a row must not grow the head
    warm = [model.next_token_logits(rows[i]) for i in order]
    assert all(np.array_equal(w, cold[i]) for w, i in zip(warm, order))
    assert model.head_hits - hits == len(order) - 2  # all but the first two prompts (which find it)
    system_turn = prompts_module.split_speech_chat(fast.tokenizer, prompts_module.SPEECH_PLACEHOLDER, None).prefix
    assert model._head.length == len(fast.token_ids(system_turn))
    options = DecodingOptions(max_new_tokens=12)
    warm_answers = [fast.generate([p], options)[0] for p in prompts]
    model.forget_head()
    assert warm_answers == [fast.generate([p], options)[0] for p in reversed(prompts)][::-1]


def test_the_emotion_question_reads_in_one_pass_when_llama_cpp_answers(fast, system_fp32, prompts):
    """No llama.cpp answer reads torch's prefix cache, so the emotion question reads its prompt in
    one pass (an NF4 LLM dequantizes its weights once, not twice), with the same scores as the
    two-part read that torch decoding keeps for its answers."""
    fast.prefix_cache.clear()
    one_pass = fast.predict_emotions([prompts[-1]])[0]
    assert fast.prefix_cache._embeds is None
    system_fp32.prefix_cache.clear()
    two_parts = system_fp32.predict_emotions([prompts[-1]])[0]
    assert system_fp32.prefix_cache._embeds is not None
    assert one_pass.label == two_parts.label
    assert one_pass.log_likelihoods == pytest.approx(two_parts.log_likelihoods, abs=1e-3)


def test_sampling_is_reproducible_with_a_seed(fast, prompts):
    sampled = DecodingOptions(max_new_tokens=16, temperature=1.0, top_p=0.95, seed=7)
    first = fast.generate(prompts[:2], sampled)
    assert first == fast.generate(prompts[:2], sampled) and first[1] == fast.generate([prompts[1]], sampled)[0]
    streamed = list(fast.stream(prompts[0], sampled))[-1]
    assert streamed == first[0]
    others = {fast.generate([prompts[0]], DecodingOptions(max_new_tokens=16, temperature=1.0, seed=s))[0]
              for s in range(3)}
    assert len(others) > 1


def test_token_picker_semantics():
    logits = np.array([0.0, 3.0, 2.9, -1.0], dtype=np.float32)
    assert token_picker(DecodingOptions()) (logits) == 1
    nucleus = token_picker(DecodingOptions(temperature=1.0, top_p=0.01, seed=1))
    assert {nucleus(logits) for _ in range(50)} == {1}  # only the top token's preceding mass is below top_p
    wide = token_picker(DecodingOptions(temperature=2.0, seed=1))
    draws = [wide(logits) for _ in range(400)]
    assert {1, 2} <= set(draws) and draws.count(1) > draws.count(3)
    # min_new_tokens: the stop token (1 here, the likeliest) is held back for the first two picks
    held = token_picker(DecodingOptions(max_new_tokens=4, min_new_tokens=2), stop_ids=[1])
    assert [held(logits) for _ in range(3)] == [2, 2, 1]


def test_decoder_choice_and_clear_errors(monkeypatch):
    with pytest.raises(ConfigError, match="decoder must be one of"):
        SEmoConfig(decoder="fast")
    monkeypatch.setenv("SEMOLLAMA_DECODER", "torch")
    assert SEmoConfig.from_env().decoder == "torch"
    assert choose_decoder(SEmoConfig(), "cpu") == "llama_cpp"
    assert choose_decoder(SEmoConfig(quantization="none"), "cpu") == "torch"
    assert choose_decoder(SEmoConfig(), "cuda") == "torch"
    with pytest.raises(ConfigError, match="no GGUF is known"):
        choose_decoder(SEmoConfig(llm="meta-llama/Llama-3.2-1B-Instruct", decoder="llama_cpp"), "cpu")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # the import fails as on a machine without it
    llama_cpp_importable.cache_clear()
    try:
        assert choose_decoder(SEmoConfig(), "cpu") == "torch"
        with pytest.raises(ConfigError, match="requirements-fast.txt"):
            choose_decoder(SEmoConfig(decoder="llama_cpp"), "cpu")
    finally:
        llama_cpp_importable.cache_clear()
