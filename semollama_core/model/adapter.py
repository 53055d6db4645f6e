"""The trainable speech adapter: stack frames, Conformer blocks, project to the LLM width.

Checkpoints are a folder with `adapter.safetensors` and `adapter_config.json`; the config
names the LLM, backbone and labels it was trained against, so a mismatch is caught at load.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..files import atomic_write, atomic_write_text
from .prosody import PROSODY_DIM, PROSODY_VERSION

UTTERANCE_DIM = 88  # openSMILE eGeMAPS v02 functionals of the whole clip
WEIGHTS_FILE, CONFIG_FILE = "adapter.safetensors", "adapter_config.json"


class CheckpointError(ValueError):
    """A missing, corrupt or mismatched adapter checkpoint, with the file and the fix."""


@dataclass(frozen=True)
class AdapterConfig:
    backbone_dim: int = 384          # Whisper tiny encoder width
    prosody_dim: int = PROSODY_DIM   # F0, voicing, energy, brightness per frame
    prosody_embed_dim: int = 32      # prosody is projected before joining the backbone states
    stack: int = 4                   # 50 Hz frames stacked by 4: one speech token per 80 ms
    d_model: int = 256
    num_blocks: int = 2              # Conformer blocks
    num_heads: int = 4
    ffn_dim: int = 512
    conv_kernel: int = 15
    dropout: float = 0.1
    llm_dim: int = 576               # SmolLM2-135M hidden size
    embed_rms: float = 0.1356        # per-dimension RMS of the LLM's token embeddings
    llm: str = ""                    # which LLM the adapter was trained against
    backbone: str = ""
    labels: tuple[str, ...] = ()
    task_mix: str = ""               # what it was aligned on, for the model card
    emotion_token: bool = True       # prepend one token: emotion posterior x label-word embeddings
    # The emotion head reads utterance functionals: pooled backbone states (mean, spread), the
    # prosody statistics and eGeMAPS (`utterance_dim`). 0 is the first design (a head on the
    # pooled Conformer states), kept so that adapters trained with it still load.
    utterance_dim: int = UTTERANCE_DIM
    head_dim: int = 256
    # Column groups of the head's input left out (head_column_groups: backbone_mean, backbone_std,
    # prosody, egemaps, absolute); () reads them all, as adapters written before this field did.
    head_exclude: tuple[str, ...] = ()
    # "asr": after the speech tokens the LLM also reads the clip's ASR hypothesis as text (the
    # lexical path; see LEXICAL_TASKS in prompts.py). "": speech tokens only (the first design).
    lexical: str = ""
    # With lexical: this many learnt tokens between the speech tokens and the words (tasks that
    # read words only), so that the speech tokens of stage 1, and with them label scoring, can
    # stay exactly as they were while the LLM learns to read them next to words.
    lexical_prompt: int = 0
    # Which prosody channel (prosody.PROSODY_VERSION) the adapter was trained on and is fed.
    prosody_version: int = PROSODY_VERSION
    # The backbone whose pooled states (mean, spread) the emotion head reads in place of the
    # adapter's own (config.EMBEDDED_WHISPER_BASE, or "" for the adapter's backbone), and its width.
    head_backbone: str = ""
    head_backbone_dim: int = 0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "AdapterConfig":
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        data["labels"] = tuple(data.get("labels", ()))
        data["head_exclude"] = tuple(data.get("head_exclude", ()))
        data.setdefault("utterance_dim", 0)  # written before the functionals head existed
        data.setdefault("prosody_version", 1)  # written before the tracker's high-pass
        return cls(**data)


class SpeechAdapter(nn.Module):
    def __init__(self, config: AdapterConfig):
        super().__init__()
        from torchaudio.models import Conformer

        self.config = config
        self.backbone_norm = nn.LayerNorm(config.backbone_dim)
        self.prosody_proj = nn.Linear(config.prosody_dim, config.prosody_embed_dim)
        joined = config.backbone_dim + config.prosody_embed_dim
        self.downsample = nn.Linear(joined * config.stack, config.d_model)
        self.conformer = Conformer(input_dim=config.d_model, num_heads=config.num_heads,
                                   ffn_dim=config.ffn_dim, num_layers=config.num_blocks,
                                   depthwise_conv_kernel_size=config.conv_kernel, dropout=config.dropout)
        self.project = nn.Linear(config.d_model, config.llm_dim)
        # Unit-RMS outputs times a learnt gain that starts at the token-embedding RMS.
        self.out_norm = nn.LayerNorm(config.llm_dim, elementwise_affine=False)
        self.gain = nn.Parameter(torch.tensor(float(config.embed_rms)))
        # Emotion classifier on utterance functionals (see head_inputs). Its posterior
        # mixes learnt embeddings, initialised from the LLM's own embeddings of the label
        # words, into one extra speech token the frozen LLM can read from the first step.
        n_labels = max(1, len(config.labels))
        if config.utterance_dim:
            width = head_input_dim(config)
            if config.head_exclude:  # the kept columns of head_inputs' full vector
                self.register_buffer("head_columns", torch.tensor(head_columns(config)), persistent=False)
            # standardisation of the head's inputs, set from the training clips (fit_emotion_head)
            self.register_buffer("head_mean", torch.zeros(width))
            self.register_buffer("head_std", torch.ones(width))
            self.emotion_head = nn.Sequential(nn.Dropout(0.2), nn.Linear(width, config.head_dim), nn.GELU(),
                                              nn.Dropout(0.5), nn.Linear(config.head_dim, n_labels))
        else:
            self.emotion_head = nn.Sequential(nn.Linear(config.d_model + PROSODY_STATS_DIM, 128), nn.GELU(),
                                              nn.Linear(128, n_labels))
        self.head_frozen = False  # set once the head is fitted: alignment then trains the rest
        self.emotion_embeddings = nn.Parameter(torch.randn(n_labels, config.llm_dim) * config.embed_rms)
        if config.lexical_prompt:
            self.lexical_prompt_tokens = nn.Parameter(torch.randn(config.lexical_prompt, config.llm_dim)
                                                      * config.embed_rms)
        self.speech_frozen = False  # stage 2 with frozen speech tokens: only the lexical prompt trains

    def output_lengths(self, frame_lengths: torch.Tensor) -> torch.Tensor:
        return torch.div(frame_lengths + self.config.stack - 1, self.config.stack, rounding_mode="floor")

    def train(self, mode: bool = True):
        super().train(mode and not self.speech_frozen)
        if self.head_frozen:
            self.emotion_head.eval()
        return self

    def forward(self, backbone_states: torch.Tensor, prosody: torch.Tensor, frame_lengths: torch.Tensor,
                utterance: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """[batch, frames, dims] -> speech embeddings [batch, tokens, llm_dim] and their lengths."""
        embeddings, lengths, _ = self.encode_all(backbone_states, prosody, frame_lengths, utterance)
        return embeddings, lengths

    def encode_all(self, backbone_states, prosody, frame_lengths, utterance=None):
        """Speech embeddings, their lengths, and the emotion logits (for the auxiliary loss)."""
        hidden, lengths = self.encode(backbone_states, prosody, frame_lengths)
        tokens = self.to_llm(hidden)
        if self.config.utterance_dim:
            logits = self.head_logits(self.head_inputs(backbone_states, prosody, frame_lengths, utterance))
        else:
            logits = self.emotion_logits(hidden, lengths, prosody_stats(prosody, frame_lengths))
        if self.config.emotion_token:
            emotion = torch.softmax(logits, dim=-1) @ self.emotion_embeddings
            tokens = torch.cat([emotion[:, None].to(tokens.dtype), tokens], dim=1)
            lengths = lengths + 1
        return tokens, lengths, logits

    def to_llm(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out_norm(self.project(hidden)) * self.gain

    def head_inputs(self, backbone_states, prosody, frame_lengths, utterance) -> torch.Tensor:
        """Utterance functionals [batch, head_input_dim]: backbone mean and spread, prosody
        statistics, eGeMAPS."""
        if utterance is None:
            raise ValueError("This adapter's emotion head needs the clip's eGeMAPS functionals "
                             "(SpeechFeatures.utterance); extract features with encoder.extract_features.")
        if self.config.head_backbone:  # collate_utterance put the head backbone's pooled states first
            k = 2 * self.config.head_backbone_dim
            if utterance.shape[-1] != k + self.config.utterance_dim:
                raise ValueError(f"This adapter's emotion head reads {self.config.head_backbone}'s pooled states "
                                 f"({k} values) before the eGeMAPS functionals; got {utterance.shape[-1]} values.")
            pooled, utterance = utterance[:, :k].to(backbone_states.dtype), utterance[:, k:]
        else:
            valid = (torch.arange(backbone_states.shape[1], device=backbone_states.device)[None]
                     < frame_lengths[:, None]).to(backbone_states.dtype)[..., None]
            n = valid.sum(1).clamp(min=1)
            mean = (backbone_states * valid).sum(1) / n
            std = (((backbone_states - mean[:, None]) ** 2 * valid).sum(1) / n).sqrt()
            pooled = torch.cat([mean, std], dim=-1)
        full = torch.cat([pooled, prosody_stats(prosody, frame_lengths).to(pooled.dtype),
                          utterance.to(pooled.dtype)], dim=-1)
        return full[:, self.head_columns] if self.config.head_exclude else full

    def head_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.emotion_head((inputs - self.head_mean) / self.head_std)

    def emotion_logits(self, hidden: torch.Tensor, lengths: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        """The first design's head: pooled Conformer states plus prosody statistics."""
        mask = (torch.arange(hidden.shape[1], device=hidden.device)[None] < lengths[:, None]).to(hidden.dtype)
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return self.emotion_head(torch.cat([pooled, stats.to(pooled.dtype)], dim=-1))

    def with_lexical_prompt(self, speech: torch.Tensor) -> torch.Tensor:
        """[tokens, width] speech embeddings of one clip, followed by the learnt lexical prompt
        when the adapter has one (call it only for prompts that read the words)."""
        if not self.config.lexical_prompt:
            return speech
        return torch.cat([speech, self.lexical_prompt_tokens.to(speech.dtype)], dim=0)

    @torch.no_grad()
    def init_lexical_prompt(self, embed_tokens: nn.Embedding, token_ids: list[int]) -> None:
        """Start the lexical prompt at the LLM's embeddings of a phrase (cycled to its length)."""
        ids = torch.tensor([token_ids[i % len(token_ids)] for i in range(self.config.lexical_prompt)],
                           device=embed_tokens.weight.device)
        self.lexical_prompt_tokens.copy_(embed_tokens.weight[ids].float().to(self.lexical_prompt_tokens.device))

    @torch.no_grad()
    def init_emotion_embeddings(self, embed_tokens: nn.Embedding, label_token_ids: list[list[int]]) -> None:
        """Start each emotion embedding at the LLM's embedding of its label word."""
        weight = embed_tokens.weight
        rows = [weight[torch.tensor(ids, device=weight.device)].float().mean(0) for ids in label_token_ids]
        self.emotion_embeddings.copy_(torch.stack(rows).to(self.emotion_embeddings.device))

    def encode(self, backbone_states: torch.Tensor, prosody: torch.Tensor,
               frame_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Conformer states [batch, tokens, d_model] before the projection, and their lengths."""
        x = torch.cat([self.backbone_norm(backbone_states), self.prosody_proj(prosody)], dim=-1)
        batch, frames, width = x.shape
        pad = (-frames) % self.config.stack
        if pad:
            x = nn.functional.pad(x, (0, 0, 0, pad))
        x = x.reshape(batch, (frames + pad) // self.config.stack, width * self.config.stack)
        lengths = self.output_lengths(frame_lengths).clamp(min=1, max=x.shape[1])
        return self.conformer(self.downsample(x), lengths)


PROSODY_STATS_DIM = 2 * PROSODY_DIM + 5


def _full_head_width(config: AdapterConfig) -> int:
    """Width of head_inputs' full vector: backbone mean and spread, prosody statistics, eGeMAPS."""
    return 2 * _head_backbone_dim(config) + PROSODY_STATS_DIM + config.utterance_dim


def _head_backbone_dim(config: AdapterConfig) -> int:
    """Width of the backbone whose pooled states the head reads (its own, or head_backbone)."""
    return config.head_backbone_dim if config.head_backbone else config.backbone_dim


def head_input_dim(config: AdapterConfig) -> int:
    return len(head_columns(config)) if config.head_exclude else _full_head_width(config)


def head_columns(config: AdapterConfig) -> list[int]:
    """The columns of head_inputs' full vector that the head reads (all but config.head_exclude)."""
    groups = head_column_groups(config)
    unknown = sorted(set(config.head_exclude) - set(groups))
    if unknown:
        raise ValueError(f"Unknown head column group(s) {', '.join(unknown)}; known: {', '.join(groups)}.")
    dropped = {i for name in config.head_exclude for i in groups[name]}
    return [i for i in range(_full_head_width(config)) if i not in dropped]


# prosody_stats columns that carry a voice's own pitch rather than its movement: the mean and
# spread of absolute F0 over all frames, and its mean over voiced frames
_ABSOLUTE_PROSODY_STATS = (0, PROSODY_DIM, 2 * PROSODY_DIM)


def _absolute_egemaps(name: str) -> bool:
    """eGeMAPS functionals that follow a voice's pitch level or the recording level."""
    if name.startswith("F0semitoneFrom27.5Hz_sma3nz_") and ("amean" in name or "percentile" in name):
        return True
    if name.startswith("loudness_sma3_") and name != "loudness_sma3_stddevNorm":
        return True
    return name == "equivalentSoundLevel_dBp"


def head_column_groups(config: AdapterConfig) -> dict[str, list[int]]:
    """Column indices of the head's input (head_inputs) by group: backbone_mean, backbone_std,
    prosody, egemaps, and `absolute` (within prosody and egemaps: pitch level and loudness)."""
    from ..baselines.standalone_ser import feature_names

    d = _head_backbone_dim(config)
    start = 2 * d
    egemaps_start = start + PROSODY_STATS_DIM
    names = feature_names() if config.utterance_dim else []
    return {"backbone_mean": list(range(d)), "backbone_std": list(range(d, start)),
            "prosody": list(range(start, egemaps_start)),
            "egemaps": list(range(egemaps_start, egemaps_start + config.utterance_dim)),
            "absolute": [start + i for i in _ABSOLUTE_PROSODY_STATS]
            + [egemaps_start + i for i, name in enumerate(names) if _absolute_egemaps(name)]}


def prosody_stats(prosody: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
    """Utterance functionals of the prosody frames: mean and spread of each feature, pitch
    level and range over voiced frames, and the voiced share (a speaking-rate proxy)."""
    frames = torch.arange(prosody.shape[1], device=prosody.device)[None] < frame_lengths[:, None]
    valid = frames.to(prosody.dtype)[..., None]
    n = valid.sum(1).clamp(min=1)
    mean = (prosody * valid).sum(1) / n
    std = (((prosody - mean[:, None]) ** 2 * valid).sum(1) / n).sqrt()
    voiced = (frames & (prosody[..., 0] != 0)).to(prosody.dtype)[..., None]
    nv = voiced.sum(1).clamp(min=1)
    pitch = prosody[..., :2]
    vmean = (pitch * voiced).sum(1) / nv
    vstd = (((pitch - vmean[:, None]) ** 2 * voiced).sum(1) / nv).sqrt()
    share = voiced.sum(1) / n
    return torch.cat([mean, std, vmean, vstd, share], dim=-1)


def save_adapter(adapter: SpeechAdapter, folder: str | os.PathLike, dtype=torch.float16,
                 extra: dict | None = None) -> Path:
    """Write weights and config atomically into `folder`."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # the head's input standardisation stays fp32 (eGeMAPS features span several magnitudes)
    tensors = {k: v.detach().to("cpu", torch.float32 if k.startswith("head_") else dtype).contiguous()
               for k, v in adapter.state_dict().items()}
    atomic_write(folder / WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt", **(extra or {})}))
    atomic_write_text(folder / CONFIG_FILE, adapter.config.to_json())
    return folder


def resolve_checkpoint(location: str) -> Path:
    """A local folder, or a Hub repo id downloaded into the local cache."""
    path = Path(location).expanduser()
    if path.exists():
        return path
    if "/" in location and not location.startswith((".", "/", "~")) and location.count("/") == 1:
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(location, allow_patterns=[WEIGHTS_FILE, CONFIG_FILE, "*.md"]))
        except Exception as e:
            # "runs/adapter" may as well be a mistyped local folder: say both.
            raise CheckpointError(f"No adapter checkpoint folder at {path}, and {location!r} cannot be fetched "
                                  f"from the Hub ({type(e).__name__}); point adapter at a local checkpoint "
                                  "folder or train one with `python -m semollama_core train`.") from None
    raise CheckpointError(f"No adapter checkpoint at {path}; train one with `python -m semollama_core "
                          "train` or set adapter to None for a fresh one.")


def load_adapter(location: str, *, llm: str | None = None, llm_dim: int | None = None,
                 device: str = "cpu") -> SpeechAdapter:
    from safetensors.torch import load_file

    folder = resolve_checkpoint(location)
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise CheckpointError(f"{path} is missing; the adapter checkpoint is incomplete. "
                                  "Retrain it or restore the file.")
    try:
        config = AdapterConfig.from_json(config_path.read_text())
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{config_path} is not a valid adapter config ({e}); restore or retrain it.") from None
    if llm is not None and config.llm and config.llm != llm:
        raise CheckpointError(f"The adapter in {folder} was trained against the LLM {config.llm!r}, "
                              f"not {llm!r}; train one for this LLM.")
    if llm_dim is not None and config.llm_dim != llm_dim:
        raise CheckpointError(f"The adapter in {folder} outputs width {config.llm_dim} but the LLM needs "
                              f"{llm_dim}; train one for this LLM.")
    adapter = SpeechAdapter(config)
    try:
        state = load_file(str(weights_path))
    except Exception as e:
        raise CheckpointError(f"{weights_path} is corrupt ({type(e).__name__}); restore or retrain it.") from None
    _check_state(adapter, state, weights_path)
    adapter.load_state_dict({k: v.float() for k, v in state.items()})
    return adapter.to(device).eval()


def _check_state(adapter: nn.Module, state: dict, path: Path) -> None:
    """Every imported weight checked by name and shape (nanoGPT's from_pretrained rule)."""
    expected = adapter.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path} does not match the adapter: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}. Retrain or restore it.")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(f"{path}: weight {name} has shape {tuple(tensor.shape)}, expected "
                                  f"{tuple(expected[name].shape)} from {CONFIG_FILE}. Retrain or restore it.")
