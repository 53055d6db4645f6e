"""A lean decoding loop over a KV cache, and label scoring by log-likelihood.

One loop serves streaming and non-streaming, single and batched generation, so greedy
answers are identical however they are asked for. The LM head runs only on the last
position of the prompt (logits_to_keep=1).
"""
from __future__ import annotations

import copy
import re
import threading
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch


@dataclass(frozen=True)
class DecodingOptions:
    max_new_tokens: int = 64
    temperature: float = 0.0   # 0 is greedy
    top_p: float = 1.0
    seed: int = 0
    min_new_tokens: int = 0    # stop tokens are never picked before this many (benchmarks: equal lengths)
    end_on_repeat: bool = True  # end an answer where it starts repeating one of its own sentences

    @property
    def guards_repeats(self) -> bool:
        """The loop guard is on (never while min_new_tokens asks for a fixed length)."""
        return self.end_on_repeat and not self.min_new_tokens

    def __post_init__(self):
        if not 1 <= self.max_new_tokens <= 1024:
            raise ValueError("max_new_tokens must be between 1 and 1024.")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError("min_new_tokens must be between 0 and max_new_tokens.")
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError("temperature must be between 0 and 2.")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("top_p must be in (0, 1].")


_SENTENCE = re.compile(r"[^.!?]*[.!?]+[\"')\]]*(?:\s+|$)")
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*$")


def _words(sentence: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", sentence.lower()))


def repeat_start(text: str) -> int | None:
    """Where `text` began repeating itself: the start of its last sentence, when that sentence
    has just ended and its words (case and punctuation aside) are an earlier sentence's words or,
    three words or more, their end ("I am a Romani." after "Ivania, I am a Romani."); else None."""
    if not _SENTENCE_END.search(text):
        return None
    spans = [m.span() for m in _SENTENCE.finditer(text) if m.group().strip()]
    if len(spans) < 2 or spans[-1][1] != len(text):
        return None
    last = _words(text[spans[-1][0]:])
    if not last:
        return None
    for start, end in spans[:-1]:
        earlier = _words(text[start:end])
        if earlier == last or (last.count(" ") >= 2 and earlier.endswith(" " + last)):
            return spans[-1][0]
    return None


def until_repeat(texts: Iterable[str]) -> Iterator[str]:
    """The growing answer texts, ended where the answer starts repeating a sentence of its own
    (a small LLM's loop): then the text without the repeat comes once more, and no more is read.
    Streaming and batch answers both pass through here, so they stay identical."""
    for text in texts:
        start = repeat_start(text)
        if start is not None:
            yield text[:start].rstrip()
            return
        yield text


def stop_token_ids(tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    for token in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>"):
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None:
            ids.add(tid)
    return sorted(i for i in ids if i is not None)


def positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


class PrefixCache:
    """The LLM's KV cache over the last prompt prefix it read alone (one row). A later prompt
    that starts with exactly the same embeddings (the same clip's speech tokens after the same
    system turn: the emotion question, then the answer) reads only what follows them.

    A prompt that may share its prefix is always read in the same two parts, the prefix alone
    and then the rest, whether the prefix is found here or not: an answer never depends on
    what ran before it. Safe to share across threads (each caller gets its own copy)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._embeds: torch.Tensor | None = None
        self._cache = None
        self.hits = 0

    def clear(self) -> None:
        """Forget the prefix (the next clip is a new one: benchmarks time turns this way)."""
        with self._lock:
            self._embeds, self._cache = None, None

    @torch.inference_mode()
    def cache_for(self, model, prefix_embeds: torch.Tensor):
        """A cache holding `prefix_embeds` ([1, positions, width]), for the caller to extend."""
        from transformers import DynamicCache

        with self._lock:
            if (self._embeds is not None and self._embeds.shape == prefix_embeds.shape
                    and torch.equal(self._embeds, prefix_embeds)):
                self.hits += 1
                return copy.deepcopy(self._cache)
        cache, length = DynamicCache(), prefix_embeds.shape[1]
        model(inputs_embeds=prefix_embeds, attention_mask=torch.ones(1, length, dtype=torch.long,
                                                                     device=prefix_embeds.device),
              position_ids=torch.arange(length, device=prefix_embeds.device)[None], past_key_values=cache,
              use_cache=True, logits_to_keep=1)
        with self._lock:
            self._embeds, self._cache = prefix_embeds.detach().clone(), copy.deepcopy(cache)
        return cache


def read_prompt(model, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                prefix: PrefixCache | None = None, split: int | None = None):
    """The prompt's forward pass: (output with the last position's logits, cache). One unpadded
    row with a `split` reads [0, split) through `prefix` and then the rest; else one pass."""
    from transformers import DynamicCache

    if (prefix is not None and split is not None and inputs_embeds.shape[0] == 1
            and 8 <= split < inputs_embeds.shape[1] and bool(attention_mask.all())):
        cache = prefix.cache_for(model, inputs_embeds[:, :split])
        out = model(inputs_embeds=inputs_embeds[:, split:], attention_mask=attention_mask,
                    position_ids=positions(attention_mask)[:, split:], past_key_values=cache, use_cache=True,
                    logits_to_keep=1)
        return out, cache
    cache = DynamicCache()
    out = model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=positions(attention_mask),
                past_key_values=cache, use_cache=True, logits_to_keep=1)
    return out, cache


@torch.inference_mode()
def decode(model, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, stop_ids: list[int],
           options: DecodingOptions, *, prefix: PrefixCache | None = None,
           split: int | None = None) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, [batch], until all rows stopped."""
    generator = torch.Generator(device="cpu").manual_seed(options.seed)
    stops = torch.tensor(stop_ids, device=inputs_embeds.device)
    mask = attention_mask
    out, cache = read_prompt(model, inputs_embeds, mask, prefix, split)
    finished = torch.zeros(inputs_embeds.shape[0], dtype=torch.bool, device=inputs_embeds.device)
    for step in range(options.max_new_tokens):
        logits = out.logits[:, -1].float()
        if step < options.min_new_tokens:
            logits[:, stops] = float("-inf")
        token = _pick(logits, options, generator)
        token = torch.where(finished, stops[0], token)
        yield token
        finished |= torch.isin(token, stops)
        if bool(finished.all()):
            return
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=positions(mask)[:, -1:],
                    past_key_values=cache, use_cache=True)


def _pick(logits: torch.Tensor, options: DecodingOptions, generator: torch.Generator) -> torch.Tensor:
    if options.temperature == 0.0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / options.temperature, dim=-1)
    if options.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < options.top_p
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs * keep)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


def generate_ids(model, inputs_embeds, attention_mask, stop_ids, options) -> list[list[int]]:
    """Batched generation; each row's tokens up to (not including) its first stop token."""
    rows: list[list[int]] = [[] for _ in range(inputs_embeds.shape[0])]
    done = [False] * len(rows)
    for token in decode(model, inputs_embeds, attention_mask, stop_ids, options):
        for i, t in enumerate(token.tolist()):
            if not done[i]:
                if t in stop_ids:
                    done[i] = True
                else:
                    rows[i].append(t)
    return rows


def shared_prefix_length(inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> int:
    """How many leading (unpadded) positions every row shares exactly: the chat template's
    system turn and the start of the user turn, the same for every row of a batch."""
    starts = (attention_mask == 0).sum(-1)                     # left padding
    shortest = int((attention_mask.shape[1] - starts).min())
    if inputs_embeds.shape[0] < 2 or shortest < 2:
        return 0
    index = starts[:, None] + torch.arange(shortest - 1, device=starts.device)[None]   # keep one row token
    rows = inputs_embeds.gather(1, index[..., None].expand(-1, -1, inputs_embeds.shape[-1]))
    same = (rows == rows[:1]).all(-1).all(0)
    return int(same.long().cumprod(0).sum())


@torch.inference_mode()
def label_log_likelihoods(model, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                          label_token_ids: list[list[int]], share_prefix: bool = True, *,
                          prefix: PrefixCache | None = None, split: int | None = None,
                          head: PrefixCache | None = None) -> torch.Tensor:
    """Sum of log-probabilities of each label's tokens after each row's prompt: [batch, labels].

    The prompt runs once; its cache is repeated for the label continuations. With
    `share_prefix`, the leading positions every row shares (system turn, start of the user
    turn) run once for the whole batch and their cache is repeated per row; the rows' own
    parts follow, left-padded after that prefix (same scores, less work); `head` keeps that
    shared part's cache from one batch to the next (the same computation, so bit-identical
    scores, and one pass fewer over the weights, which an NF4 LLM dequantizes on every pass:
    about 8 % of a 16-clip batch on 2 cores). One row with a `split` reads its prompt as
    `read_prompt` does (its prefix is then cached for the answer).
    """
    from transformers import DynamicCache

    batch, n_labels = inputs_embeds.shape[0], len(label_token_ids)
    longest = max(len(t) for t in label_token_ids)
    device = inputs_embeds.device
    labels = torch.zeros(n_labels, longest, dtype=torch.long, device=device)
    label_mask = torch.zeros(n_labels, longest, dtype=torch.long, device=device)
    for j, ids in enumerate(label_token_ids):
        labels[j, : len(ids)] = torch.tensor(ids, device=device)
        label_mask[j, : len(ids)] = 1
    cache = DynamicCache()
    shared = shared_prefix_length(inputs_embeds, attention_mask) if share_prefix else 0
    if batch == 1:
        out, cache = read_prompt(model, inputs_embeds, attention_mask, prefix, split)
    elif shared >= 8:
        starts = (attention_mask == 0).sum(-1)
        shared_embeds = inputs_embeds[:1, int(starts[0]): int(starts[0]) + shared]
        if head is not None:
            cache = head.cache_for(model, shared_embeds)
        else:
            model(inputs_embeds=shared_embeds, attention_mask=torch.ones(1, shared, dtype=attention_mask.dtype,
                                                                         device=device),
                  position_ids=torch.arange(shared, device=device)[None], past_key_values=cache, use_cache=True,
                  logits_to_keep=1)
        cache.batch_repeat_interleave(batch)
        rest_len = attention_mask.shape[1] - int(starts.min()) - shared
        rest = inputs_embeds.new_zeros(batch, rest_len, inputs_embeds.shape[-1])
        rest_mask = torch.zeros(batch, rest_len, dtype=attention_mask.dtype, device=device)
        for i in range(batch):
            own = inputs_embeds[i, int(starts[i]) + shared:]
            rest[i, rest_len - own.shape[0]:] = own
            rest_mask[i, rest_len - own.shape[0]:] = 1
        attention_mask = torch.cat([torch.ones(batch, shared, dtype=rest_mask.dtype, device=device), rest_mask], 1)
        out = model(inputs_embeds=rest, attention_mask=attention_mask,
                    position_ids=positions(attention_mask)[:, shared:], past_key_values=cache, use_cache=True,
                    logits_to_keep=1)
    else:
        out = model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                    position_ids=positions(attention_mask), past_key_values=cache, use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)          # [batch, vocab]
    scores = first[:, labels[:, 0]]                                      # [batch, labels]
    if longest > 1:
        cache.batch_repeat_interleave(n_labels)
        rows_labels = labels.repeat(batch, 1)                            # [batch*labels, longest]
        rows_mask = torch.cat([attention_mask.repeat_interleave(n_labels, 0), label_mask.repeat(batch, 1)], 1)
        cont = model(input_ids=rows_labels[:, :-1], attention_mask=rows_mask[:, :-1],
                     position_ids=positions(rows_mask[:, :-1])[:, -(longest - 1):],
                     past_key_values=cache, use_cache=True)
        logp = torch.log_softmax(cont.logits.float(), dim=-1)
        picked = logp.gather(-1, rows_labels[:, 1:, None]).squeeze(-1) * label_mask.repeat(batch, 1)[:, 1:]
        scores = scores + picked.sum(-1).view(batch, n_labels)
    return scores
