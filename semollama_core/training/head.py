"""The adapter's emotion head: fitted alone on utterance functionals, then frozen, and its
auxiliary loss during alignment."""
from __future__ import annotations

import torch
from tqdm import tqdm

from ..metrics import unweighted_accuracy
from ..model.adapter import SpeechAdapter
from ..model.encoder import SpeechFeatures, adapter_inputs


def auxiliary_emotion_loss(adapter, features: list, emotions: list[str], device) -> torch.Tensor:
    """Emotion CE of the adapter's classifier alone: many clips a step at the adapter's cost."""
    labels = list(adapter.config.labels)
    _, _, logits = adapter.encode_all(*adapter_inputs(adapter, features, device))
    target = torch.tensor([labels.index(e) for e in emotions], device=logits.device)
    return torch.nn.functional.cross_entropy(logits.float(), target)


@torch.no_grad()
def head_inputs(adapter: SpeechAdapter, features: list[SpeechFeatures], device, batch: int = 64) -> torch.Tensor:
    rows = []
    for i in range(0, len(features), batch):
        part = features[i:i + batch]
        rows.append(adapter.head_inputs(*adapter_inputs(adapter, part, device)))
    return torch.cat(rows)


def clip_source(utt) -> str:
    """Which corpus a clip came from (the `source` column of a mixed manifest, else `corpus`)."""
    return str(utt.extra.get("source") or utt.extra.get("corpus") or "")


def balanced_weights(utts: list, labels: list[str]) -> torch.Tensor:
    """One weight per clip so that every (source, label) cell weighs the same: a few hundred
    real clips are not drowned by thousands of synthetic ones, and no class by another."""
    cells: dict[tuple[str, str], int] = {}
    for u in utts:
        cells[(clip_source(u), u.emotion)] = cells.get((clip_source(u), u.emotion), 0) + 1
    w = torch.tensor([1.0 / cells[(clip_source(u), u.emotion)] for u in utts])
    return w * len(w) / w.sum()


def train_head(head: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, *, epochs: int,
               seed: int = 0, weight_decay: float = 1e-2, progress: bool = True) -> torch.nn.Module:
    """The head's loop on standardised inputs `x`: fresh Linear weights, AdamW, batches of 64,
    label smoothing 0.1, per-clip `weights`; the head is returned in eval mode.
    Initialisation and dropout draw from torch's global generator: it is seeded here (and the
    caller's state given back after), so the head depends on `seed` and the data alone, not on
    whatever the process drew before (fit-head and the stage-1 fit are then repeatable)."""
    for p in head.parameters():
        p.requires_grad_(True)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for module in head:
            if isinstance(module, torch.nn.Linear):
                module.reset_parameters()
        optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=weight_decay)
        head.train()
        for _ in tqdm(range(epochs), desc="emotion head", unit="epoch", disable=not progress):
            order = torch.randperm(len(x), generator=generator)
            for i in range(0, len(x), 64):
                b = order[i:i + 64].to(x.device)
                loss = (torch.nn.functional.cross_entropy(head(x[b]), y[b], label_smoothing=0.1,
                                                          reduction="none") * weights[b]).sum() / weights[b].sum()
                optimizer.zero_grad(), loss.backward(), optimizer.step()
    return head.eval()


def fit_emotion_head(adapter: SpeechAdapter, train_clips: list, dev_clips: list, *, epochs: int,
                     seed: int = 0, device: str = "cpu", balance: bool = True) -> dict:
    """Fit the emotion head alone on utterance functionals (no LLM: seconds), then freeze it,
    so alignment teaches the rest of the adapter and the LLM's reading of a fixed posterior.
    Standardisation, input and hidden dropout, label smoothing and weight decay keep it from
    learning the training voices (an unregularised head reached 0.99 on train, 0.77 on dev)."""
    labels = list(adapter.config.labels)
    train_clips = [c for c in train_clips if c[0].emotion in labels]
    x = head_inputs(adapter, [f for _, f, _ in train_clips], device)
    y = torch.tensor([labels.index(u.emotion) for u, _, _ in train_clips], device=x.device)
    weights = (balanced_weights([u for u, _, _ in train_clips], labels) if balance
               else torch.ones(len(train_clips))).to(x.device)
    adapter.head_mean.copy_(x.mean(0))
    adapter.head_std.copy_(x.std(0).clamp(min=1e-3))
    head = train_head(adapter.emotion_head, (x - adapter.head_mean) / adapter.head_std, y, weights,
                      epochs=epochs, seed=seed)
    for p in head.parameters():
        p.requires_grad_(False)
    adapter.head_frozen = True
    report = {}
    dev_clips = [c for c in dev_clips if c[0].emotion in labels]
    parts = [("train", train_clips), ("dev", dev_clips)]
    sources = sorted({clip_source(u) for u, _, _ in dev_clips})
    if len(sources) > 1:  # each corpus apart: real speech is the goal, not the synthetic average
        parts += [(f"dev_{src}", [c for c in dev_clips if clip_source(c[0]) == src]) for src in sources]
    for split, clips in parts:
        if clips:
            with torch.no_grad():
                pred = adapter.head_logits(head_inputs(adapter, [f for _, f, _ in clips], device)).argmax(-1)
            report[f"head_{split}_ua"] = unweighted_accuracy([u.emotion for u, _, _ in clips],
                                                             [labels[int(i)] for i in pred], tuple(labels))
    return report


def with_head_inputs(adapter, head_exclude: tuple[str, ...], head_backbone: str = ""):
    """A copy of `adapter` whose (unfitted) head reads all but the `head_exclude` column groups,
    with the pooled states of `head_backbone` ("" the adapter's own); every weight outside the
    head is copied bit for bit."""
    import dataclasses

    from ..model.backbone import WIDTHS

    if head_backbone and head_backbone not in WIDTHS:
        raise ValueError(f"Unknown head backbone {head_backbone!r}; known: {', '.join(WIDTHS)}.")
    fresh = SpeechAdapter(dataclasses.replace(adapter.config, head_exclude=head_exclude, head_backbone=head_backbone,
                                              head_backbone_dim=WIDTHS.get(head_backbone, 0)))
    kept = {k: v for k, v in adapter.state_dict().items() if not k.startswith(("head_", "emotion_head."))}
    missing, unexpected = fresh.load_state_dict(kept, strict=False)
    assert not unexpected and all(k.startswith(("head_", "emotion_head.")) for k in missing), (missing, unexpected)
    return fresh.to(next(adapter.parameters()).device).eval()
