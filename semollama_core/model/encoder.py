"""Speech to LLM embeddings: frozen backbone + prosody features, then the trainable adapter."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .adapter import AdapterConfig, SpeechAdapter, load_adapter
from .backbone import WhisperBackbone
from .prosody import PROSODY_VERSION, prosody_features


@dataclass
class SpeechFeatures:
    """What the frozen part of the encoder makes of one clip (cacheable for training)."""
    backbone_states: np.ndarray   # [frames, backbone width]
    prosody: np.ndarray           # [frames, prosody dims]
    utterance: np.ndarray | None = None  # [88] eGeMAPS functionals of the whole clip
    transcript: str | None = None  # the ASR hypothesis, for adapters that read words (lexical="asr")
    # [2 * width] pooled states of the emotion head's own backbone (AdapterConfig.head_backbone)
    head_states: np.ndarray | None = None
    # Whisper base's p(English) of the clip, which the language router reads (None: not routed)
    p_english: float | None = None

    @property
    def n_frames(self) -> int:
        return self.backbone_states.shape[0]


def extract_features(backbone: WhisperBackbone, audio: np.ndarray,
                     prosody_version: int = PROSODY_VERSION) -> SpeechFeatures:
    """The frozen features of one clip, with the prosody channel an adapter was trained on."""
    states = backbone.encode(audio)
    return SpeechFeatures(states.astype(np.float32), prosody_features(audio, states.shape[0], prosody_version),
                          utterance_features(audio))


def utterance_features(audio: np.ndarray) -> np.ndarray:
    """eGeMAPS v02 functionals [88] of a 16 kHz mono clip (the emotion head's acoustic summary)."""
    from ..baselines.standalone_ser import extract_features as egemaps

    return egemaps([audio])[0].astype(np.float32)


def collate_features(features: list[SpeechFeatures], device: str = "cpu"):
    """Pad a list of clips to [batch, frames, dims] tensors plus frame lengths."""
    lengths = torch.tensor([f.n_frames for f in features], dtype=torch.long)
    longest = int(lengths.max())

    def pad(arrays):
        out = np.zeros((len(arrays), longest, arrays[0].shape[1]), dtype=np.float32)
        for i, a in enumerate(arrays):
            out[i, : a.shape[0]] = a
        return torch.from_numpy(out).to(device)

    return pad([f.backbone_states for f in features]), pad([f.prosody for f in features]), lengths.to(device)


def collate_utterance(features: list[SpeechFeatures], device: str = "cpu",
                      head_backbone: str = "") -> torch.Tensor | None:
    """[batch, 88] utterance functionals, or None when a clip has none. For an adapter whose head
    reads a second backbone (`head_backbone`), its pooled states come first: [batch, 2 * width + 88]."""
    if any(f.utterance is None for f in features):
        return None
    rows = [f.utterance for f in features]
    if head_backbone:
        if any(f.head_states is None for f in features):
            raise ValueError(f"This adapter's emotion head reads {head_backbone}'s pooled states "
                             "(SpeechFeatures.head_states); extract features with the pipeline's features().")
        rows = [np.concatenate([f.head_states, u]) for f, u in zip(features, rows)]
    return torch.from_numpy(np.stack(rows).astype(np.float32)).to(device)


def adapter_inputs(adapter: SpeechAdapter, features: list[SpeechFeatures], device: str = "cpu"):
    """A batch as the adapter's forward, encode_all and head_inputs take it: padded states, prosody,
    frame lengths, and the utterance functionals (led by the head backbone's pooled states when the
    adapter's head reads one)."""
    return (*collate_features(features, device), collate_utterance(features, device, adapter.config.head_backbone))


def speech_embeddings(adapter: SpeechAdapter, features: list[SpeechFeatures], device: str = "cpu") -> list[torch.Tensor]:
    """One [tokens, llm width] tensor per clip; differentiable when the adapter trains.

    At inference every clip runs alone: padding would change a clip's tokens (torchaudio's
    Conformer masks padded frames in attention only, its depthwise convolution and the last
    stacked frame still read them), so a clip's tokens would depend on the other clips of its
    batch. Training keeps the padded batch (one pass; the noise is harmless there)."""
    if not adapter.training and len(features) > 1:
        return [speech_embeddings(adapter, [f], device)[0] for f in features]
    embeddings, out_lengths = adapter(*adapter_inputs(adapter, features, device))
    return [embeddings[i, : int(n)] for i, n in enumerate(out_lengths)]


def build_adapter(location: str | None, *, llm_name: str, llm_dim: int, embed_rms: float,
                  backbone_name: str, backbone_dim: int, labels: tuple[str, ...], device: str,
                  seed: int = 0) -> SpeechAdapter:
    """Load a trained adapter, or make a fresh one (answers are then noise) when there is none."""
    if location:
        return load_adapter(location, llm=llm_name, llm_dim=llm_dim, device=device)
    torch.manual_seed(seed)
    config = AdapterConfig(backbone_dim=backbone_dim, llm_dim=llm_dim, embed_rms=embed_rms,
                           llm=llm_name, backbone=backbone_name, labels=tuple(labels))
    return SpeechAdapter(config).to(device).eval()
