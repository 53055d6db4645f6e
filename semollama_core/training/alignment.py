"""The alignment loss: [prefix | speech | suffix | target] rows through the frozen LLM,
cross-entropy on the target tokens only, optionally plus KL to the teacher (the same LLM
reading the emotion-conditioned text prompt) and the emotion head's auxiliary loss."""
from __future__ import annotations

import torch

from ..model import prompts
from ..model.encoder import adapter_inputs

IGNORE = -100


class AlignmentBatcher:
    """Turns examples into [prefix | speech | suffix | target] rows with labels on the target."""

    def __init__(self, system, max_target_tokens: int):
        self.system = system
        self.tokenizer = system.tokenizer
        self.end_id = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if not isinstance(self.end_id, int) or self.end_id == self.tokenizer.unk_token_id:
            self.end_id = self.tokenizer.eos_token_id
        self.max_target_tokens = max_target_tokens
        self._parts: dict[tuple, tuple[list[int], list[int]]] = {}

    def parts(self, task: str, heard: str | None = None) -> tuple[list[int], list[int]]:
        if (task, heard) not in self._parts:
            speech_task = "respond" if task == "respond_neutral" else task
            chat = prompts.split_speech_chat(self.tokenizer, prompts.speech_turn(speech_task, heard=heard),
                                             self.system.config.system_prompt)
            self._parts[task, heard] = (self.system.token_ids(chat.prefix), self.system.token_ids(chat.suffix))
        return self._parts[task, heard]

    def target_ids(self, text: str) -> list[int]:
        return self.system.token_ids(text)[: self.max_target_tokens] + [self.end_id]

    def rows(self, examples: list, speech: list[torch.Tensor]):
        embed = self.system.llm.embed_tokens
        device = embed.weight.device
        rows, label_rows = [], []
        for ex, sp in zip(examples, speech):
            prefix, suffix = self.parts(ex.task, ex.heard)
            target = self.target_ids(ex.target)
            with torch.no_grad():
                text = embed(torch.tensor(prefix + suffix + target, device=device))
            sp = sp.to(text.dtype)
            row = torch.cat([text[: len(prefix)], sp, text[len(prefix):]])
            labels = [IGNORE] * (len(prefix) + sp.shape[0] + len(suffix)) + target
            rows.append(row)
            label_rows.append(labels)
        return _right_pad(rows, label_rows, device)


def _right_pad(rows, label_rows, device):
    longest = max(r.shape[0] for r in rows)
    embeds = rows[0].new_zeros(len(rows), longest, rows[0].shape[1])
    mask = torch.zeros(len(rows), longest, dtype=torch.long, device=device)
    labels = torch.full((len(rows), longest), IGNORE, dtype=torch.long, device=device)
    for i, (row, lab) in enumerate(zip(rows, label_rows)):
        embeds[i, : row.shape[0]] = row
        mask[i, : row.shape[0]] = 1
        labels[i, : len(lab)] = torch.tensor(lab, device=device)
    return embeds, mask, labels


def response_logits(model, embeds, mask, labels):
    """Logits only at positions that predict a label (the LM head skips the prompt)."""
    hidden = model.model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    shifted = labels[:, 1:]
    where = shifted != IGNORE
    logits = model.lm_head(hidden[:, :-1][where]).float()
    return logits, shifted[where]


def teacher_logits(system, batcher, examples: list) -> torch.Tensor:
    """The frozen LLM on the emotion-conditioned text prompt, at the same target tokens."""
    from ..model.embeds import splice_speech

    prefixes, suffixes, empties, label_rows = [], [], [], []
    for ex in examples:
        text = prompts.render_chat(system.tokenizer, _teacher_turn(ex), system.config.system_prompt)
        ids = system.token_ids(text)
        target = batcher.target_ids(ex.target)
        prefixes.append(ids + target)
        suffixes.append([])
        empties.append(torch.zeros(0, system.llm.hidden_size))
        label_rows.append([IGNORE] * len(ids) + target)
    with torch.no_grad():
        batch = splice_speech(prefixes, empties, suffixes, system.llm.embed_tokens)
        labels = torch.full(batch.attention_mask.shape, IGNORE, dtype=torch.long, device=batch.attention_mask.device)
        for i, lab in enumerate(label_rows):
            labels[i, labels.shape[1] - len(lab):] = torch.tensor(lab)
        logits, _ = response_logits(system.llm.model, batch.inputs_embeds, batch.attention_mask, labels)
    return logits


def _teacher_turn(ex) -> str:
    if ex.task == "ser":
        return prompts.ser_text_turn(ex.transcript, ex.emotion)
    if ex.task == "asr":
        return f"{prompts.text_turn(ex.transcript, ex.emotion)}\n{prompts.TASK_INSTRUCTIONS['asr']}"
    return prompts.text_turn(ex.transcript, None if ex.task == "respond_neutral" else ex.emotion)


def alignment_loss(system, adapter, batcher, examples, features, options, device):
    picked = [features[ex.clip] for ex in examples]
    projected, out_lengths, emotion_logits = adapter.encode_all(*adapter_inputs(adapter, picked, device))
    speech = [projected[i, : int(n)] if ex.heard is None else adapter.with_lexical_prompt(projected[i, : int(n)])
              for i, (n, ex) in enumerate(zip(out_lengths, examples))]
    embeds, mask, labels = batcher.rows(examples, speech)
    logits, targets = response_logits(system.llm.model, embeds, mask, labels)
    loss = torch.nn.functional.cross_entropy(logits, targets)
    stats = {"ce": float(loss.detach())}
    if options.aux_weight > 0 and options.mode == "emotion" and not adapter.head_frozen:
        labels_set = list(adapter.config.labels)
        known = [i for i, ex in enumerate(examples) if ex.emotion in labels_set]
        if known:
            aux_logits = emotion_logits[known]
            aux_target = torch.tensor([labels_set.index(examples[i].emotion) for i in known], device=aux_logits.device)
            aux = torch.nn.functional.cross_entropy(aux_logits.float(), aux_target)
            loss = loss + options.aux_weight * aux
            stats["aux"] = float(aux.detach())
    if options.kl_weight > 0 and options.mode == "emotion":
        teacher = teacher_logits(system, batcher, examples)
        kl = torch.nn.functional.kl_div(torch.log_softmax(logits, -1), torch.log_softmax(teacher, -1),
                                        log_target=True, reduction="batchmean")
        loss = loss + options.kl_weight * kl
        stats["kl"] = float(kl.detach())
    return loss, stats
