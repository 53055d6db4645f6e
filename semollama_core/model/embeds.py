"""Join modalities the simple way (blsp-emo): [prefix | speech | suffix] embeddings, left-padded."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SEGMENT_SYSTEM, SEGMENT_SPEECH, SEGMENT_INSTRUCTION, SEGMENT_GENERATED = "system", "speech", "instruction", "generated"


@dataclass
class SplicedBatch:
    inputs_embeds: torch.Tensor      # [batch, time, width]
    attention_mask: torch.Tensor     # [batch, time], 0 on left padding
    speech_spans: list[tuple[int, int]]  # per row, [start, end) of the speech embeddings
    # per row, where the part that every prompt about the same clip shares ends (the chat's
    # system turn and the clip's speech tokens, before a lexical prompt); None for text rows
    shared_ends: list[int | None] | None = None


def splice_speech(prefix_ids: list[list[int]], speech_embeddings: list[torch.Tensor],
                  suffix_ids: list[list[int]], embed_tokens: torch.nn.Module,
                  shared_speech: list[int | None] | None = None) -> SplicedBatch:
    """Concatenate token embeddings and speech embeddings per row; left-pad to one length.
    `shared_speech`: per row, how many leading speech embeddings other prompts about the same
    clip share (None: the row shares nothing beyond what shared_prefix_length finds)."""
    weight = embed_tokens.weight
    rows, spans = [], []
    for prefix, speech, suffix in zip(prefix_ids, speech_embeddings, suffix_ids):
        ids = torch.tensor(prefix + suffix, dtype=torch.long, device=weight.device)
        text = embed_tokens(ids)
        speech = speech.to(device=weight.device, dtype=text.dtype)
        rows.append(torch.cat([text[: len(prefix)], speech, text[len(prefix):]], dim=0))
        spans.append((len(prefix), len(prefix) + speech.shape[0]))
    longest = max(r.shape[0] for r in rows)
    width = rows[0].shape[1]
    embeds = rows[0].new_zeros(len(rows), longest, width)
    mask = torch.zeros(len(rows), longest, dtype=torch.long, device=weight.device)
    for i, row in enumerate(rows):
        pad = longest - row.shape[0]
        embeds[i, pad:] = row
        mask[i, pad:] = 1
        spans[i] = (spans[i][0] + pad, spans[i][1] + pad)
    shared = shared_speech or [None] * len(rows)
    ends = [None if n is None else start + n for (start, _), n in zip(spans, shared)]
    return SplicedBatch(embeds, mask, spans, ends)


def segment_labels(prefix_len: int, speech_len: int, suffix_len: int, generated_len: int,
                   system_end: int) -> list[str]:
    """Label each input position; `system_end` is where the system turn ends inside the prefix."""
    labels = [SEGMENT_SYSTEM] * system_end + [SEGMENT_INSTRUCTION] * (prefix_len - system_end)
    labels += [SEGMENT_SPEECH] * speech_len + [SEGMENT_INSTRUCTION] * suffix_len
    return labels + [SEGMENT_GENERATED] * generated_len


def unpadded_rows(batch: SplicedBatch) -> list[np.ndarray]:
    """Each row's spliced embeddings without its left padding, float32 on the CPU."""
    return [row[mask.bool()].detach().float().cpu().numpy()
            for row, mask in zip(batch.inputs_embeds, batch.attention_mask)]
