"""The fast decode path: the frozen LLM's own GGUF run by llama.cpp (`llama-cpp-python`,
requirements-fast.txt), fed the very `inputs_embeds` SEmoLlama splices (speech embeddings
between chat-template tokens), as llava feeds image embeddings: `llama_batch_init(n, n_embd, 1)`
with `batch.embd`, then `llama_decode`.

Prompts are still built by torch (`SEmoLlama.encode_prompts`); label scoring, training and
attention capture stay on torch. llama.cpp multiplies the GGUF's Q4_1 weights with 8-bit
activations, torch the same weights dequantized (fp32) or requantized (NF4). llama.cpp's
next-token logits track torch fp32 closely (correlation above 0.99, tested); NF4's requantization
moves them much more, so llama.cpp and torch NF4 greedy answers often part early.

`llama_cpp` is imported only when a model is built: this module imports without it.
"""
from __future__ import annotations

import ctypes
import functools
import itertools
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ..config import ConfigError, SEmoConfig

INSTALL_HINT = "pip install -r requirements-fast.txt"


class LlamaCppUnavailable(RuntimeError):
    """llama-cpp-python is not importable here (it is an optional dependency)."""


def llama_cpp_module():
    try:
        import llama_cpp
    except (ImportError, OSError) as e:  # OSError: its shared library fails to load
        raise LlamaCppUnavailable(f"llama-cpp-python is not importable ({e}); "
                                  f"install it with `{INSTALL_HINT}`.") from None
    return llama_cpp


@functools.lru_cache(maxsize=1)
def llama_cpp_importable() -> bool:
    try:
        llama_cpp_module()
    except LlamaCppUnavailable:
        return False
    return True


PROBE_TIMEOUT_S = 120


@functools.lru_cache(maxsize=1)
def llama_cpp_problem() -> str | None:
    """Why llama.cpp cannot run on this machine, or None. Runs it once, in a child process, on a
    prompt of ~100 tokens: batched prompt evaluation runs other kernels than one-token decoding
    (seen: a native build whose batched matrix kernels fault on a VM's CPU while short prompts
    pass), and a build that faults must not take the caller down with it."""
    import subprocess
    import sys

    if not llama_cpp_importable():
        return f"llama-cpp-python is not importable (install it with `{INSTALL_HINT}`)"
    probe = ("import sys, llama_cpp; m = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=256, n_batch=128, "
             "verbose=False); m(' '.join(['hello'] * 100), max_tokens=2)")
    try:
        done = subprocess.run([sys.executable, "-c", probe, str(embedded_gguf_path())], capture_output=True,
                              text=True, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"llama.cpp did not answer within {PROBE_TIMEOUT_S} s"
    except Exception as e:  # the GGUF wheel is missing, or no child process can start
        return f"llama.cpp could not be tried ({type(e).__name__}: {e})"
    if done.returncode != 0:
        status = f"signal {-done.returncode}" if done.returncode < 0 else f"exit status {done.returncode}"
        last = status if done.returncode < 0 else (done.stderr.strip().splitlines() or [status])[-1]
        return f"llama.cpp failed here ({last[:200]})"
    return None


def embedded_gguf_path() -> Path:
    from .llm import GGUF_FILE, gguf_location

    return gguf_location() / GGUF_FILE


def choose_decoder(config: SEmoConfig, device: str) -> str:
    """"torch" or "llama_cpp" for this configuration; an explicit llama_cpp that cannot run is a ConfigError.

    auto runs llama.cpp for the embedded LLM on the CPU at the default nf4: the GGUF is itself
    4-bit (Q4_1), while asking for none, bf16 or int8 asks for those torch weights.
    """
    if config.decoder == "torch":
        return "torch"
    if config.decoder == "llama_cpp":
        if not config.is_embedded:
            raise ConfigError(f"decoder 'llama_cpp' runs the embedded GGUF only, and no GGUF is known for "
                              f"{config.llm!r}; set decoder to auto or torch.")
        if not llama_cpp_importable():
            raise ConfigError("decoder 'llama_cpp' needs llama-cpp-python, which is not importable here; "
                              f"install it with `{INSTALL_HINT}` or set decoder to auto or torch.")
        return "llama_cpp"
    fits = config.is_embedded and device == "cpu" and config.quantization == "nf4"
    # auto never picks a build that faults here (llama_cpp_problem runs it once in a child process)
    return "llama_cpp" if fits and llama_cpp_importable() and llama_cpp_problem() is None else "torch"


def context_size(config: SEmoConfig, speech_tokens_per_s: float = 12.5) -> int:
    """Room for the longest accepted clip's speech tokens, the chat template and 1024 new tokens."""
    needed = int(config.max_audio_s * speech_tokens_per_s * 1.1) + 512 + 1024
    return max(2048, -(-needed // 256) * 256)


# ----------------------------------------------------------------------------- sampling

def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max()
    return z - np.log(np.exp(z).sum())


def token_picker(options, stop_ids: Sequence[int] = ()) -> Callable[[np.ndarray], int]:
    """generation._pick on one row of numpy logits: greedy at temperature 0, else temperature and
    top-p (nucleus: tokens whose preceding probability mass is below top_p) sampled from a
    generator seeded with options.seed; one picker per answer, so every row of a batch draws
    the same stream as it would alone. `stop_ids` are never picked for the first
    options.min_new_tokens tokens."""
    pick = _base_picker(options)
    if not options.min_new_tokens or not stop_ids:
        return pick
    stops, picked = np.asarray(list(stop_ids)), itertools.count()

    def pick_after_minimum(logits: np.ndarray) -> int:
        if next(picked) < options.min_new_tokens:
            logits = logits.copy()
            logits[stops] = -np.inf
        return pick(logits)
    return pick_after_minimum


def _base_picker(options) -> Callable[[np.ndarray], int]:
    if options.temperature == 0.0:
        return lambda logits: int(logits.argmax())
    rng = np.random.default_rng(options.seed)

    def pick(logits: np.ndarray) -> int:
        probs = np.exp(log_softmax(logits / options.temperature))
        if options.top_p < 1.0:
            order = np.argsort(-probs, kind="stable")
            ranked = probs[order]
            keep = np.cumsum(ranked) - ranked < options.top_p
            probs = np.zeros_like(probs)
            probs[order[keep]] = ranked[keep]
        cdf = np.cumsum(probs)
        return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(cdf) - 1))
    return pick


# ----------------------------------------------------------------------------- the model

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


@dataclass
class _Answer:
    """One answer being generated: its prompt and the tokens it has kept so far."""
    id: int
    prompt: object
    generated: list[int] = field(default_factory=list)


class LlamaCppModel:
    """A GGUF model in llama.cpp: token streams, next-token logits and label scores from
    token ids or input embeddings (a prompt is a list of token ids, or spliced embeddings as a
    float32 array [positions, n_embd] with no padding rows).

    One llama.cpp context serves every caller: a lock guards each call into it, and the KV
    cache remembers whose answer it holds. An answer that finds another's state there (two
    streams interleaved, or a stream left half-read) re-reads its prompt and its own tokens,
    so no lock is held between the tokens a stream yields.

    The prompt head: the leading positions that the last two prompts read shared before they
    parted (the chat's system turn, the same for every clip) are kept as a saved KV state, and a
    prompt that starts with them reads only what follows. A prompt read again does not grow it.
    Every prompt is read from an emptied cache, either whole or as head and rest; both give
    bit-identical logits (tests/test_llama_cpp_decode.py), so an answer never depends on what was
    read before it. (Trimming a used cache back to a shared prefix instead does not: a later
    single position can land in another KV cell and round differently.)
    """

    def __init__(self, gguf_path: str | Path | None = None, *, n_threads: int, n_ctx: int = 4096,
                 n_batch: int = 512):
        llama_cpp = llama_cpp_module()
        self._lib = llama_cpp
        path = Path(gguf_path or embedded_gguf_path())
        self.llama = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch,
                                     n_threads=n_threads, n_threads_batch=n_threads, verbose=False)
        self.path, self.n_threads, self.n_batch = path, n_threads, n_batch
        self.n_ctx = self.llama.n_ctx()
        self.n_embd, self.n_vocab = self.llama.n_embd(), self.llama.n_vocab()
        self._ctx = self.llama.ctx
        self._token_batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._embd_batch = llama_cpp.llama_batch_init(n_batch, self.n_embd, 1)
        # Freed when closed, collected, or at exit (Llama.__del__ at interpreter teardown prints a traceback).
        self._free = weakref.finalize(self, _free, llama_cpp, self.llama, self._token_batch, self._embd_batch)
        self._lock = threading.Lock()
        self._answer_ids = itertools.count(1)
        self._holder: tuple[int, int] | None = None   # (answer id, its tokens in the cache)
        self._last_prompt = None                         # the prompt read last (to find a shared head)
        self._head: _PromptHead | None = None
        self.head_hits = 0                               # prompts that reused the head

    def footprint_mb(self) -> float:
        """Size of the model's tensors as llama.cpp holds them (the GGUF's own quantization)."""
        return self._lib.llama_model_size(self.llama._model.model) / 2**20

    def describe(self) -> str:
        return f"llama.cpp ({self.path.name}, {self.n_threads} threads)"

    def close(self) -> None:
        with self._lock:
            self._free()

    def fits(self, prompt_len: int, max_new_tokens: int) -> bool:
        return prompt_len + max_new_tokens <= self.n_ctx

    # ----- public calls ------------------------------------------------------------------
    def tokens(self, prompt, max_new_tokens: int, stop_ids: Sequence[int],
               pick: Callable[[np.ndarray], int] | None = None) -> Iterator[int]:
        """The generated token ids one by one, ending after a stop token or max_new_tokens."""
        answer = _Answer(next(self._answer_ids), self._checked(prompt))
        if not self.fits(_length(answer.prompt), max_new_tokens):
            raise ValueError(f"Prompt ({_length(answer.prompt)}) plus {max_new_tokens} new tokens exceed "
                             f"llama.cpp's context of {self.n_ctx}.")
        pick = pick or (lambda logits: int(logits.argmax()))
        for _ in range(max_new_tokens):
            with self._lock:
                logits = self._next_logits(answer)
            token = pick(logits)
            yield token
            if token in stop_ids:
                return
            answer.generated.append(token)

    def next_token_logits(self, prompt) -> np.ndarray:
        """Logits [vocab] for the token after the prompt."""
        prompt = self._checked(prompt)
        with self._lock:
            self._restart(prompt)
            return self._logits(-1).copy()

    def label_log_likelihoods(self, prompt, label_token_ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Sum of log-probabilities of each label's tokens after the prompt: [labels].

        The prompt runs once; a label of several tokens is decoded after it, read, and removed
        from the KV cache again (llama_memory_seq_rm) before the next label."""
        prompt = self._checked(prompt)
        start = _length(prompt)
        with self._lock:
            self._restart(prompt)
            first = log_softmax(self._logits(-1))
            scores = np.array([first[ids[0]] for ids in label_token_ids], dtype=np.float64)
            for j, ids in enumerate(label_token_ids):
                if len(ids) > 1:
                    self._feed_tokens(list(ids[:-1]), start, every_logit=True)
                    scores[j] += sum(log_softmax(self._logits(k))[t] for k, t in enumerate(ids[1:]))
                    self._lib.llama_memory_seq_rm(self._lib.llama_get_memory(self._ctx), 0, start, -1)
        return scores

    # ----- timed greedy runs (the benchmark) ----------------------------------------------
    def generate_from_tokens(self, prompt_ids: list[int], max_new_tokens: int, stop_ids: list[int]) -> GreedyRun:
        return self._timed_greedy(list(prompt_ids), max_new_tokens, stop_ids)

    def generate_from_embeddings(self, inputs_embeds: np.ndarray, max_new_tokens: int,
                                 stop_ids: list[int]) -> GreedyRun:
        """inputs_embeds: [positions, n_embd] float32, already spliced (no padding rows)."""
        return self._timed_greedy(inputs_embeds, max_new_tokens, stop_ids)

    def _timed_greedy(self, prompt, max_new_tokens: int, stop_ids: list[int]) -> GreedyRun:
        prompt = self._checked(prompt)
        start = time.perf_counter()
        kept: list[int] = []
        first = last_kept = None
        for token in self.tokens(prompt, max_new_tokens, stop_ids):
            now = time.perf_counter()
            first = first or now
            if token in stop_ids:  # a stop token's own step is not generation time
                break
            kept.append(token)
            last_kept = now
        first = first or time.perf_counter()
        return GreedyRun(kept, _length(prompt), first - start, (last_kept or first) - first)

    # ----- the KV cache --------------------------------------------------------------------
    def _next_logits(self, answer: _Answer) -> np.ndarray:
        """Bring the cache to the answer's prompt + tokens and return the next logits (lock held)."""
        try:
            if self._holder is None or self._holder[0] != answer.id:
                self._restart(answer.prompt)
                done = 0
            else:
                done = self._holder[1]
            if answer.generated[done:]:
                self._feed_tokens(answer.generated[done:], _length(answer.prompt) + done)
            self._holder = (answer.id, len(answer.generated))
            return self._logits(-1).copy()
        except BaseException:
            self._holder = None
            raise

    def forget_head(self) -> None:
        """Drop the saved prompt head: the next prompt is read whole (benchmarks of a cold start)."""
        with self._lock:
            self._head, self._last_prompt = None, None

    def _restart(self, prompt) -> None:
        """Empty the cache and read a prompt, through the saved head where the prompt starts with
        it; the logits of its last position are then ready."""
        self._holder = None
        memory = self._lib.llama_get_memory(self._ctx)
        self._lib.llama_memory_clear(memory, True)
        head, length = self._head, _length(prompt)
        if head is not None and head.length < length and _common_length(head.rows, prompt) == head.length:
            if self._lib.llama_state_seq_set_data(self._ctx, head.state, len(head.state), 0) > 0:
                self.head_hits += 1
                self._feed_part(prompt, head.length)
                self._last_prompt = _copy(prompt)
                return
            self._head = None  # llama.cpp refused its own state: read whole from now on
            self._lib.llama_memory_clear(memory, True)
        last = self._last_prompt
        shared = _common_length(last, prompt) if last is not None else 0
        if MIN_HEAD <= shared < min(length, _length(last) if last is not None else 0):  # two prompts that part
            self._feed_part(prompt[:shared], 0)
            state = self._saved_state()
            self._head = None if state is None else _PromptHead(_copy(prompt[:shared]), state)
            self._feed_part(prompt, shared)
        else:
            self._feed_part(prompt, 0)
        self._last_prompt = _copy(prompt)

    def _feed_part(self, prompt, first_position: int) -> None:
        """Read prompt[first_position:] at its own positions."""
        if isinstance(prompt, np.ndarray):
            self._feed_embeddings(prompt[first_position:], first_position)
        else:
            self._feed_tokens(list(prompt[first_position:]), first_position)

    def _saved_state(self):
        """The cache's KV state (sequence 0) as bytes llama_state_seq_set_data reads back, or None."""
        size = self._lib.llama_state_seq_get_size(self._ctx, 0)
        state = (ctypes.c_uint8 * size)()
        written = self._lib.llama_state_seq_get_data(self._ctx, state, size, 0)
        if not written:
            return None
        return (ctypes.c_uint8 * written).from_buffer_copy(state) if written != size else state

    def _checked(self, prompt):
        if isinstance(prompt, np.ndarray):
            embeds = np.ascontiguousarray(prompt, dtype=np.float32)
            if embeds.ndim != 2 or embeds.shape[1] != self.n_embd:
                raise ValueError(f"inputs_embeds must be [positions, {self.n_embd}], not {list(embeds.shape)}.")
            prompt = embeds
        if _length(prompt) < 1:
            raise ValueError("The prompt is empty.")
        return prompt

    def _logits(self, i: int) -> np.ndarray:
        """A view of the logits of batch row i (-1: the last); valid until the next decode."""
        return np.ctypeslib.as_array(self._lib.llama_get_logits_ith(self._ctx, i), shape=(self.n_vocab,))

    # ----- batches -----------------------------------------------------------------------
    def _feed_tokens(self, ids: list[int], first_position: int, *, every_logit: bool = False) -> None:
        def fill(batch, start, count):
            for i in range(count):
                batch.token[i] = ids[start + i]
        self._feed(self._token_batch, len(ids), first_position, fill, every_logit)

    def _feed_embeddings(self, embeds: np.ndarray, first_position: int = 0) -> None:
        embeds = np.ascontiguousarray(embeds)

        def fill(batch, start, count):
            ctypes.memmove(batch.embd, embeds[start: start + count].ctypes.data, count * self.n_embd * 4)
        self._feed(self._embd_batch, len(embeds), first_position, fill, False)

    def _feed(self, batch, length: int, first_position: int, fill, every_logit: bool) -> None:
        """Positions in chunks of n_batch; logits for the last one (or, every_logit, for all)."""
        if every_logit and length > self.n_batch:
            raise ValueError(f"At most {self.n_batch} positions can return logits at once.")
        for start in range(0, length, self.n_batch):
            count = min(self.n_batch, length - start)
            batch.n_tokens = count
            fill(batch, start, count)
            for i in range(count):
                _set_position(batch, i, first_position + start + i,
                              want_logits=every_logit or start + i == length - 1)
            status = self._lib.llama_decode(self._ctx, batch)
            if status != 0:
                raise RuntimeError(f"llama_decode failed with status {status}.")


MIN_HEAD = 8  # a shorter shared head is not worth saving


@dataclass(frozen=True)
class _PromptHead:
    """Leading prompt positions and the KV state that holds them (llama_state_seq_get_data)."""
    rows: object       # float32 [positions, n_embd] embeddings, or token ids
    state: object      # ctypes uint8 array

    @property
    def length(self) -> int:
        return _length(self.rows)


def _copy(prompt):
    return prompt.copy() if isinstance(prompt, np.ndarray) else list(prompt)


def _common_length(a, b) -> int:
    """How many leading positions two prompts (both embeddings or both token ids) share exactly."""
    if isinstance(a, np.ndarray) != isinstance(b, np.ndarray):
        return 0
    n = min(_length(a), _length(b))
    same = (np.all(a[:n] == b[:n], axis=1) if isinstance(a, np.ndarray)
            else np.asarray(list(a[:n])) == np.asarray(list(b[:n])))
    return n if bool(same.all()) else int(np.argmin(same))


def _free(lib, llama, *batches) -> None:
    for batch in batches:
        lib.llama_batch_free(batch)
    llama.close()


def _length(prompt) -> int:
    return int(prompt.shape[0]) if isinstance(prompt, np.ndarray) else len(prompt)


def _set_position(batch, i: int, position: int, *, want_logits: bool) -> None:
    batch.pos[i] = position
    batch.n_seq_id[i] = 1
    batch.seq_id[i][0] = 0
    batch.logits[i] = want_logits


def load_for(llm, *, n_threads: int, n_ctx: int = 4096, gguf_path: str | Path | None = None) -> LlamaCppModel:
    """The GGUF model for a FrozenLLM, checked to have its width and vocabulary."""
    model = LlamaCppModel(gguf_path, n_threads=n_threads, n_ctx=n_ctx)
    expected = (llm.hidden_size, int(llm.model.config.vocab_size))
    if (model.n_embd, model.n_vocab) != expected:
        model.close()
        raise ValueError(f"{model.path.name} (width {model.n_embd}, vocabulary {model.n_vocab}) "
                         f"does not match the system's LLM (width {expected[0]}, vocabulary {expected[1]}).")
    return model


class LlamaCppSpeechLLM:
    """Greedy answers decoded by llama.cpp from SEmoLlama's own spliced prompt, whatever the
    system's configured decoder (the benchmark compares the two).

    The prompt (system turn, speech embeddings, instruction) is built by the torch system,
    `system.encode_prompts(...)`; llama.cpp only runs the frozen LLM over it.
    """

    def __init__(self, system, *, n_threads: int | None = None, gguf_path: str | Path | None = None,
                 model: LlamaCppModel | None = None):
        import torch

        if model is None and gguf_path is None and not system.config.is_embedded:
            raise ValueError(f"No GGUF file is known for {system.config.llm!r}; pass gguf_path.")
        self.system = system
        self.model = model or load_for(system.llm, n_threads=n_threads or torch.get_num_threads(),
                                       gguf_path=gguf_path)

    def run(self, prompt, max_new_tokens: int | None = None, system_prompt: str | None = None) -> GreedyRun:
        """prompt: a semollama_core.model.types.PromptInput (any system: speech or text)."""
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
