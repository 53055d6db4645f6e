"""The llama.cpp peer: the same GGUF file the embedded LLM is converted from, decoded greedily
by llama.cpp (`llama-cpp-python`, requirements-bench.txt), fed either token ids or the very
`inputs_embeds` SEmoLlama splices (speech embeddings between chat-template tokens), as llava
feeds image embeddings: `llama_batch_init(n, n_embd, 1)` with `batch.embd`, then `llama_decode`.

The torch path stays the one for training, label scoring and attention; this is a faster
decode path for the same frozen weights. llama.cpp multiplies the GGUF's Q4_1 weights with
8-bit activations, torch the same weights dequantized (fp32) or requantized (NF4), so greedy
answers can part where two tokens are close.
"""
from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class LlamaCppUnavailable(RuntimeError):
    """llama-cpp-python is not installed here (it is an optional benchmark dependency)."""


def llama_cpp_module():
    try:
        import llama_cpp
    except ImportError as e:
        raise LlamaCppUnavailable(f"llama-cpp-python is not importable ({e}); "
                                  "install it with `pip install -r requirements-bench.txt`.") from None
    return llama_cpp


def embedded_gguf_path() -> Path:
    from semollama_core.llm import GGUF_FILE, gguf_location

    return gguf_location() / GGUF_FILE


@dataclass(frozen=True)
class GreedyRun:
    """One greedy generation: the new token ids (stop token excluded) and its clock times."""
    token_ids: list[int]
    prompt_tokens: int
    time_to_first_token_s: float   # prompt evaluation and the first pick
    decode_s: float                # from the first kept token to the last one

    @property
    def tokens_per_s(self) -> float | None:
        """Generation speed after the first token (the prompt is timed apart)."""
        later = len(self.token_ids) - 1
        return later / self.decode_s if later > 0 and self.decode_s > 0 else None


class LlamaCppModel:
    """A GGUF model in llama.cpp with a greedy loop over token ids or input embeddings."""

    def __init__(self, gguf_path: str | Path | None = None, *, n_threads: int, n_ctx: int = 4096,
                 n_batch: int = 512):
        llama_cpp = llama_cpp_module()
        self._lib = llama_cpp
        path = Path(gguf_path or embedded_gguf_path())
        self.llama = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch,
                                     n_threads=n_threads, n_threads_batch=n_threads, verbose=False)
        self.path, self.n_threads, self.n_ctx, self.n_batch = path, n_threads, n_ctx, n_batch
        self.n_embd, self.n_vocab = self.llama.n_embd(), self.llama.n_vocab()
        self._ctx = self.llama.ctx
        self._token_batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._embd_batch = llama_cpp.llama_batch_init(n_batch, self.n_embd, 1)

    def footprint_mb(self) -> float:
        """Size of the model's tensors as llama.cpp holds them (the GGUF's own quantization)."""
        return self._lib.llama_model_size(self.llama._model.model) / 2**20

    def close(self) -> None:
        if self._token_batch is not None:
            self._lib.llama_batch_free(self._token_batch)
            self._lib.llama_batch_free(self._embd_batch)
            self._token_batch = self._embd_batch = None
        self.llama.close()

    # ----- the greedy loop ---------------------------------------------------------------
    def generate_from_tokens(self, prompt_ids: list[int], max_new_tokens: int, stop_ids: list[int]) -> GreedyRun:
        return self._greedy(lambda: self._feed_tokens(prompt_ids), len(prompt_ids), max_new_tokens, stop_ids)

    def generate_from_embeddings(self, inputs_embeds: np.ndarray, max_new_tokens: int,
                                 stop_ids: list[int]) -> GreedyRun:
        """inputs_embeds: [positions, n_embd] float32, already spliced (no padding rows)."""
        embeds = np.ascontiguousarray(inputs_embeds, dtype=np.float32)
        if embeds.ndim != 2 or embeds.shape[1] != self.n_embd:
            raise ValueError(f"inputs_embeds must be [positions, {self.n_embd}], not {list(embeds.shape)}.")
        return self._greedy(lambda: self._feed_embeddings(embeds), len(embeds), max_new_tokens, stop_ids)

    def _greedy(self, feed_prompt, prompt_len: int, max_new_tokens: int, stop_ids: list[int]) -> GreedyRun:
        if prompt_len + max_new_tokens > self.n_ctx:
            raise ValueError(f"Prompt ({prompt_len}) plus {max_new_tokens} new tokens exceed n_ctx {self.n_ctx}.")
        self._lib.llama_memory_clear(self._lib.llama_get_memory(self._ctx), True)
        start = time.perf_counter()
        feed_prompt()
        token, tokens = self._argmax(), []
        first = known = last_kept = time.perf_counter()
        while token not in stop_ids and len(tokens) < max_new_tokens:
            tokens.append(token)
            last_kept = known  # a stop token's own step is not generation time
            if len(tokens) < max_new_tokens:
                self._decode_token(token, prompt_len + len(tokens) - 1)
                token, known = self._argmax(), time.perf_counter()
        return GreedyRun(tokens, prompt_len, first - start, last_kept - first)

    def _argmax(self) -> int:
        logits = np.ctypeslib.as_array(self._lib.llama_get_logits_ith(self._ctx, -1), shape=(self.n_vocab,))
        return int(logits.argmax())

    # ----- batches -----------------------------------------------------------------------
    def _feed_tokens(self, ids: list[int]) -> None:
        def fill(batch, start, count):
            for i in range(count):
                batch.token[i] = ids[start + i]
        self._feed(self._token_batch, len(ids), fill)

    def _feed_embeddings(self, embeds: np.ndarray) -> None:
        def fill(batch, start, count):
            ctypes.memmove(batch.embd, embeds[start: start + count].ctypes.data, count * self.n_embd * 4)
        self._feed(self._embd_batch, len(embeds), fill)

    def _feed(self, batch, length: int, fill) -> None:
        """The prompt in chunks of n_batch positions; only the last position computes logits."""
        if length < 1:
            raise ValueError("The prompt is empty.")
        for start in range(0, length, self.n_batch):
            count = min(self.n_batch, length - start)
            batch.n_tokens = count
            fill(batch, start, count)
            for i in range(count):
                _set_position(batch, i, start + i, want_logits=start + i == length - 1)
            self._decode(batch)

    def _decode_token(self, token: int, position: int) -> None:
        batch = self._token_batch
        batch.n_tokens = 1
        batch.token[0] = token
        _set_position(batch, 0, position, want_logits=True)
        self._decode(batch)

    def _decode(self, batch) -> None:
        status = self._lib.llama_decode(self._ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status}.")


def _set_position(batch, i: int, position: int, *, want_logits: bool) -> None:
    batch.pos[i] = position
    batch.n_seq_id[i] = 1
    batch.seq_id[i][0] = 0
    batch.logits[i] = want_logits


class LlamaCppSpeechLLM:
    """speech_llm answers decoded greedily by llama.cpp from SEmoLlama's own spliced prompt.

    The prompt (system turn, speech embeddings, instruction) is built by the torch system,
    `system.encode_prompts(...)`; llama.cpp only runs the frozen LLM over it.
    """

    def __init__(self, system, *, n_threads: int | None = None, gguf_path: str | Path | None = None,
                 model: LlamaCppModel | None = None):
        import torch

        if model is None and gguf_path is None and not system.config.is_embedded:
            raise ValueError(f"No GGUF file is known for {system.config.llm!r}; pass gguf_path.")
        self.system = system
        self.model = model or LlamaCppModel(gguf_path, n_threads=n_threads or torch.get_num_threads())
        expected = (system.llm.hidden_size, int(system.llm.model.config.vocab_size))
        if (self.model.n_embd, self.model.n_vocab) != expected:
            raise ValueError(f"{self.model.path.name} (width {self.model.n_embd}, vocabulary {self.model.n_vocab}) "
                             f"does not match the system's LLM (width {expected[0]}, vocabulary {expected[1]}).")

    def run(self, prompt, max_new_tokens: int | None = None, system_prompt: str | None = None) -> GreedyRun:
        """prompt: a semollama_core.pipeline.PromptInput (any system: speech or text)."""
        batch = self.system.encode_prompts([prompt], system_prompt=system_prompt)
        embeds = batch.inputs_embeds[0].detach().float().cpu().numpy()
        return self.model.generate_from_embeddings(embeds, max_new_tokens or self.system.config.max_new_tokens,
                                                   self.system.stop_ids)

    def generate(self, prompt, max_new_tokens: int | None = None, system_prompt: str | None = None) -> str:
        return self.decode(self.run(prompt, max_new_tokens, system_prompt))

    def decode(self, run: GreedyRun) -> str:
        return self.system.tokenizer.decode(run.token_ids, skip_special_tokens=True).strip()

    def close(self) -> None:
        self.model.close()
