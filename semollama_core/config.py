"""One configuration says which models, checkpoints, prompts and labels the system uses."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS = REPO_ROOT / "assets"
EMBEDDED_LLM = "embedded:smollm2-135m-instruct"
EMBEDDED_WHISPER = "embedded:whisper-tiny.en"
# Whisper base (multilingual), the emotion head's second backbone (AdapterConfig.head_backbone)
EMBEDDED_WHISPER_BASE = "embedded:whisper-base"
CORE_LABELS = ("neutral", "happy", "sad", "angry")
QUANTIZATIONS = ("nf4", "int8", "none", "bf16")
DECODERS = ("auto", "torch", "llama_cpp")


class ConfigError(ValueError):
    """A configuration that cannot work, explained in one sentence."""


def default_cache_dir() -> Path:
    """Per-user model cache; SEMOLLAMA_CACHE overrides it."""
    env = os.environ.get("SEMOLLAMA_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "semollama"


def default_data_dir() -> Path:
    env = os.environ.get("SEMOLLAMA_DATA_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "semollama"


@dataclass(frozen=True)
class SEmoConfig:
    # Frozen LLM: the embedded SmolLM2 GGUF, or any Hugging Face Llama-family causal LM id.
    llm: str = EMBEDDED_LLM
    # nf4 (bitsandbytes 4-bit, the default), int8 (bitsandbytes 8-bit), none (fp32 CPU / bf16 CUDA),
    # bf16 (unquantised bfloat16 anywhere: twice as fast as fp32 on CPUs with AVX512-BF16).
    quantization: str = "nf4"
    # Speech backbone: embedded Whisper tiny.en (CTranslate2) or a Hugging Face Whisper id.
    backbone: str = EMBEDDED_WHISPER
    # ASR model for transcripts (text_only and cascade); same choices as backbone.
    asr: str = EMBEDDED_WHISPER
    # Trained adapter: a folder or a Hub repo id; None runs a freshly initialised adapter.
    adapter: str | None = str(ASSETS / "speech_llm")
    # Language router: the adapter for clips Whisper base does not hear as English (its emotion head
    # reads Whisper base, which transfers to unheard languages far better; README, "Language router").
    # "auto": assets/speech_llm_multilingual when `adapter` is the shipped one; None: no routing.
    other_language_adapter: str | None = "auto"
    # A clip goes to other_language_adapter when Whisper base's p(English) is below this (chosen on dev).
    english_threshold: float = 0.5
    # Adapter aligned without emotion conditioning, for the neutral_aligned system.
    neutral_adapter: str | None = str(ASSETS / "neutral_aligned")
    # Standalone SER model (openSMILE eGeMAPS + linear) used by cascade.
    standalone_ser: str | None = str(ASSETS / "standalone_ser")
    # "auto" picks CUDA when present.
    device: str = "auto"
    # Label set for emotion recognition; data, not code.
    labels: tuple[str, ...] = CORE_LABELS
    # None uses prompts.DEFAULT_SYSTEM_PROMPT.
    system_prompt: str | None = None
    max_new_tokens: int = 64
    # Longest accepted clip, checked before the models see it.
    max_audio_s: float = 180.0
    # CPU threads for torch, CTranslate2 and llama.cpp; 0 keeps the library defaults (llama.cpp: torch's).
    threads: int = 0
    # What decodes answers and scores labels: torch, or llama.cpp on the embedded GGUF fed the
    # spliced input embeddings (llama_cpp_decode.py). auto: llama.cpp when llama-cpp-python is
    # importable, the LLM is the embedded one, the device the CPU and quantization nf4; else torch.
    # Training and attention capture always run on torch.
    decoder: str = "auto"
    # Where converted models live.
    cache_dir: str = field(default_factory=lambda: str(default_cache_dir()))

    def __post_init__(self):
        if self.quantization not in QUANTIZATIONS:
            raise ConfigError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, "
                              f"not {self.quantization!r}.")
        if self.decoder not in DECODERS:
            raise ConfigError(f"decoder must be one of {', '.join(DECODERS)}, not {self.decoder!r}.")
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise ConfigError("labels must hold at least two distinct names.")
        object.__setattr__(self, "labels", tuple(str(x) for x in self.labels))
        if not 1 <= self.max_new_tokens <= 1024:
            raise ConfigError("max_new_tokens must be between 1 and 1024.")
        if not 1.0 <= self.max_audio_s <= 3600:
            raise ConfigError("max_audio_s must be between 1 and 3600 seconds.")
        if isinstance(self.other_language_adapter, str) and self.other_language_adapter.lower() in ("", "none"):
            object.__setattr__(self, "other_language_adapter", None)
        try:
            object.__setattr__(self, "english_threshold", float(self.english_threshold))
        except (TypeError, ValueError):
            raise ConfigError(f"english_threshold must be a number, not {self.english_threshold!r}.") from None
        if not 0.0 <= self.english_threshold <= 1.0:
            raise ConfigError("english_threshold must be between 0 and 1.")

    def resolved_other_language_adapter(self) -> str | None:
        """The language router's adapter for clips not heard as English, or None (no routing)."""
        if self.other_language_adapter != "auto":
            return self.other_language_adapter
        shipped = self.adapter is not None and Path(self.adapter) == ASSETS / "speech_llm"
        other = ASSETS / "speech_llm_multilingual"
        return str(other) if shipped and other.exists() else None

    @property
    def is_embedded(self) -> bool:
        return self.llm == EMBEDDED_LLM

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def replace(self, **changes) -> "SEmoConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SEmoConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"Unknown configuration keys: {', '.join(sorted(unknown))}.")
        data = dict(data)
        if "labels" in data:
            data["labels"] = tuple(data["labels"])
        return cls(**data)

    @classmethod
    def from_env(cls, **overrides) -> "SEmoConfig":
        """Defaults, then a JSON file named by SEMOLLAMA_CONFIG, then SEMOLLAMA_* variables."""
        data: dict = {}
        path = os.environ.get("SEMOLLAMA_CONFIG")
        if path:
            try:
                data.update(json.loads(Path(path).read_text()))
            except (OSError, json.JSONDecodeError) as e:
                raise ConfigError(f"Cannot read the configuration file {path}: {e}.") from None
        for name in ("llm", "quantization", "backbone", "asr", "adapter", "device", "system_prompt",
                     "decoder", "other_language_adapter", "english_threshold"):
            value = os.environ.get(f"SEMOLLAMA_{name.upper()}")
            if value:
                data[name] = value
        if os.environ.get("SEMOLLAMA_LABELS"):
            data["labels"] = tuple(os.environ["SEMOLLAMA_LABELS"].split(","))
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data)
