"""Teacher-forced scoring of given answers: the NLL per response token under a system's prompt."""
from __future__ import annotations

import torch

from .embeds import unpadded_rows
from .types import PromptInput


def response_nll(system, inputs: list[PromptInput], responses: list[str], *,
                 speech: list[torch.Tensor] | None = None) -> list[float]:
    """Teacher-forced NLL per response token of each response after its prompt.

    Scored by the backend that decodes the system's answers (llama.cpp when the system decodes
    with it, else torch at the configured quantization), so an oracle answer is scored by the
    model that chose it. One row at a time, without padding: a row's NLL never depends on the
    other rows of its batch. The response is the text's tokens (no end-of-turn token), as the
    system would continue its assistant turn. `speech`: speech embeddings to splice instead of
    the adapter's (ablations; see SEmoLlama.encode_prompts).
    """
    if len(inputs) != len(responses):
        raise ValueError(f"{len(inputs)} prompts but {len(responses)} responses.")
    ids = [system.token_ids(r) or [system.stop_ids[0]] for r in responses]
    prompt = system.encode_prompts(inputs, speech=speech)
    out = []
    cpp = system.llama_cpp
    for i, (row, mask) in enumerate(zip(prompt.inputs_embeds, prompt.attention_mask)):
        if cpp is not None and cpp.fits(int(mask.sum()), len(ids[i])):
            embeds = unpadded_rows(type(prompt)(row[None], mask[None], [prompt.speech_spans[i]]))[0]
            out.append(-float(cpp.label_log_likelihoods(embeds, [ids[i]])[0]) / len(ids[i]))
            continue
        with torch.inference_mode():
            target = torch.tensor(ids[i], device=row.device)
            embeds = torch.cat([row[mask.bool()], system.llm.embed_tokens(target).to(row.dtype)], 0)[None]
            logits = system.llm.model(inputs_embeds=embeds, logits_to_keep=len(ids[i]) + 1).logits[0, :-1].float()
            logp = torch.log_softmax(logits, -1).gather(-1, target[:, None]).squeeze(-1)
        out.append(float(-logp.mean()))
    return out
