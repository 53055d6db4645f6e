"""SEmoLlama: a trained speech adapter feeds speech embeddings into a frozen LLM.

The public face; eval/ and the app use these names only:

    from semollama_core import load_system, SEmoConfig, DecodingOptions
    system = load_system(SEmoConfig.from_env())
    for event in system.respond_stream("clip.wav"):
        ...

Names load lazily, so `import semollama_core` stays light (no torch until a name needs it).
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    # building the system
    "SEmoLlama": "model.pipeline",
    "SEmoConfig": "config", "ConfigError": "config", "QUANTIZATIONS": "config", "ASSETS": "config",
    "REPO_ROOT": "config", "EMBEDDED_LLM": "config",
    "DecodingOptions": "model.generation",
    # what a system reads and returns
    "PromptInput": "model.types", "EmotionPrediction": "model.types", "RespondResult": "model.types",
    "SYSTEMS": "model.types", "SPEECH_SYSTEMS": "model.types", "SYSTEM_READS": "model.types",
    # the events of one turn (SEmoLlama.respond_stream)
    "TurnEvent": "model.types", "TranscriptEvent": "model.types", "EmotionEvent": "model.types",
    "StandaloneEvent": "model.types", "TokenEvent": "model.types", "AnswerEvent": "model.types",
    "TurnDone": "model.types", "TURN_SYSTEMS": "model.turn", "DEFAULT_TURN_SYSTEMS": "model.turn",
    "AttentionCapture": "model.attention",
    # audio and data
    "SAMPLE_RATE": "model.audio", "AudioError": "model.audio", "load_audio": "model.audio",
    "save_wav": "model.audio", "mix_at_snr": "model.audio", "speech_level_db": "model.audio",
    "coloured_noise": "corpus.channel",
    "Utterance": "corpus.manifest", "ManifestError": "corpus.manifest", "iter_manifest": "corpus.manifest",
    "read_manifest": "corpus.manifest", "write_manifest": "corpus.manifest",
    "load_uploaded_manifest": "corpus.archive",
    # the standalone SER baseline
    "StandaloneSER": "baselines.standalone_ser",
    # shared small helpers
    "atomic_write": "files", "atomic_write_text": "files", "unweighted_accuracy": "metrics",
    "quiet_libraries": "logs", "cpu_model": "machine",
    # building blocks for a second frozen LLM (the judge) and the llama.cpp peer
    "prompts": "model.prompts", "load_llm": "model.llm", "unpadded_rows": "model.embeds",
    "LlamaCppModel": "model.llama_cpp_decode", "LlamaCppSpeechLLM": "model.llama_cpp_decode",
    "LlamaCppUnavailable": "model.llama_cpp_decode", "GreedyRun": "model.llama_cpp_decode",
    "embedded_gguf_path": "model.llama_cpp_decode", "llama_cpp_module": "model.llama_cpp_decode", "llama_cpp_problem": "model.llama_cpp_decode",
}

__all__ = sorted([*_EXPORTS, "load_system"])


def load_system(config=None):
    """The whole system (SEmoLlama) built from one configuration (default: SEMOLLAMA_* settings)."""
    from .model.pipeline import load_system as load

    return load(config)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'semollama_core' has no attribute {name!r}")
    module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
    value = module if name == "prompts" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
