"""Attention capture for one generation: from every generated token to every input position.

The fast (SDPA) path returns no weights, so after a normal greedy generation we run one
teacher-forced forward pass over prompt + answer with eager attention (whisper's caution).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import prompts
from .embeds import SEGMENT_GENERATED, SEGMENT_INSTRUCTION, SEGMENT_SPEECH, SEGMENT_SYSTEM
from .generation import DecodingOptions, generate_ids
from .types import PromptInput


@dataclass(frozen=True)
class AttentionCapture:
    attentions: np.ndarray          # [layers, heads, generated, positions] float32; rows sum to 1
    segments: list[str]             # per position: system / speech / instruction / generated
    input_tokens: list[str]         # per position; speech positions are "<speech i>"
    generated_tokens: list[str]
    speech_span: tuple[int, int]
    text: str

    def speech_share(self) -> np.ndarray:
        """Attention mass on speech positions, [layers, heads, generated]."""
        start, end = self.speech_span
        return self.attentions[..., start:end].sum(-1)

    def save_npz(self, path: str | Path) -> Path:
        np.savez_compressed(path, attentions=self.attentions, segments=np.array(self.segments),
                            input_tokens=np.array(self.input_tokens),
                            generated_tokens=np.array(self.generated_tokens),
                            speech_span=np.array(self.speech_span), text=np.array(self.text))
        return Path(path)


def capture_attention(system, audio: np.ndarray, options: DecodingOptions | None = None,
                      system_prompt: str | None = None, features=None) -> AttentionCapture:
    options = options or DecodingOptions(max_new_tokens=system.config.max_new_tokens)
    features = features if features is not None else system.features(audio)
    prompt = PromptInput("speech_llm", features)
    batch = system.encode_prompts([prompt], system_prompt=system_prompt)
    generated = generate_ids(system.llm.model, batch.inputs_embeds, batch.attention_mask, system.stop_ids, options)[0]
    if not generated:
        generated = [system.stop_ids[0]]
    answer = torch.tensor(generated, device=batch.inputs_embeds.device)
    embeds = torch.cat([batch.inputs_embeds[0], system.llm.embed_tokens(answer).to(batch.inputs_embeds.dtype)])
    prompt_len = batch.inputs_embeds.shape[1]
    weights = _eager_attentions(system.llm.model, embeds[None])
    rows = slice(prompt_len - 1, prompt_len - 1 + len(generated))
    # The last generated token is never attended to by the rows that predict tokens.
    keys = slice(0, prompt_len + len(generated) - 1)
    attn = np.stack([w[0, :, rows, keys].float().cpu().numpy() for w in weights])  # [L, H, G, P]
    start, end = batch.speech_spans[0]
    adapter = system.adapter_for(prompt.system, prompt.features)
    adapter_prompt = adapter.config.lexical_prompt if system.heard_words(prompt) is not None else 0
    segments, tokens = _label_positions(system, prompt, (start, end - adapter_prompt), generated,
                                        system.resolve_system_prompt(system_prompt), adapter_prompt)
    gen_tokens = [system.tokenizer.decode([t]) for t in generated]
    return AttentionCapture(attn.astype(np.float32), segments, tokens, gen_tokens, (start, end - adapter_prompt),
                            system.tokenizer.decode(generated, skip_special_tokens=True).strip())


@torch.inference_mode()
def _eager_attentions(model, embeds: torch.Tensor):
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        out = model(inputs_embeds=embeds, output_attentions=True, use_cache=False)
    finally:
        model.set_attn_implementation(previous)
    return out.attentions


def _label_positions(system, prompt, span, generated, system_prompt, adapter_prompt: int = 0):
    """Segment and token label of every input position. The lexical prompt's learnt tokens
    (after the speech tokens, before the words) count as instruction, not speech."""
    parts = prompts.split_speech_chat(system.tokenizer, prompts.speech_turn(prompt.task, prompt.instruction, system.heard_words(prompt)),
                                        system_prompt)
    prefix_ids = system.token_ids(parts.prefix)
    suffix_ids = system.token_ids(parts.suffix)
    # The system turn ends where the user turn's header starts.
    system_turn = parts.prefix[: parts.prefix.rfind("user")].rsplit("<|", 1)[0] if "<|" in parts.prefix else ""
    system_end = min(len(system.token_ids(system_turn)), len(prefix_ids))
    start, end = span
    segments = ([SEGMENT_SYSTEM] * system_end + [SEGMENT_INSTRUCTION] * (len(prefix_ids) - system_end)
                + [SEGMENT_SPEECH] * (end - start) + [SEGMENT_INSTRUCTION] * (adapter_prompt + len(suffix_ids))
                + [SEGMENT_GENERATED] * (len(generated) - 1))
    tokens = ([system.tokenizer.decode([t]) for t in prefix_ids] + [f"<speech {i}>" for i in range(end - start)]
              + [f"<lexical prompt {i}>" for i in range(adapter_prompt)]
              + [system.tokenizer.decode([t]) for t in suffix_ids]
              + [system.tokenizer.decode([t]) for t in generated[:-1]])
    return segments, tokens
