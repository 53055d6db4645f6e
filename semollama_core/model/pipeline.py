"""The whole system, built once from one configuration: the compared systems, label
scoring, streaming, one turn (turn.py), response NLL (scoring.py) and attention capture
(attention.py) over one frozen LLM."""
from __future__ import annotations

import functools
import itertools
import logging
import threading
from typing import Iterator, Sequence

import numpy as np
import torch

from . import prompts
from .audio import AudioInput, load_audio
from .backbone import Transcriber, WhisperBackbone, embedded_whisper_base_path, pooled_states
from ..config import EMBEDDED_WHISPER, EMBEDDED_WHISPER_BASE, ConfigError, SEmoConfig
from .embeds import SplicedBatch, splice_speech, unpadded_rows
from .encoder import SpeechFeatures, adapter_inputs, build_adapter, extract_features, speech_embeddings
from .generation import (DecodingOptions, PrefixCache, decode, label_log_likelihoods, stop_token_ids,
                         until_repeat)
from .attention import AttentionCapture, capture_attention
from .llama_cpp_decode import LlamaCppModel, choose_decoder, context_size, load_for, token_picker
from .llm import FrozenLLM, ModelUnavailableError, load_llm
from .scoring import response_nll
from .turn import DEFAULT_TURN_SYSTEMS, run_turn
from .types import SPEECH_SYSTEMS, EmotionPrediction, PromptInput, RespondResult, TurnDone, TurnEvent

log = logging.getLogger(__name__)


class SEmoLlama:
    """Load once, share read-only; every call takes its own inputs and options."""

    def __init__(self, config: SEmoConfig | None = None, *, llm: FrozenLLM | None = None):
        self.config = config or SEmoConfig()
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        self.device = self.config.resolved_device()
        self.llm = llm or load_llm(self.config)
        self.tokenizer = self.llm.tokenizer
        self.stop_ids = stop_token_ids(self.tokenizer)
        self.backbone = WhisperBackbone(self.config.backbone, self.config.threads, self.device)
        self.adapter = self._adapter(self.config.adapter)
        self.other_adapter = self._other_language_adapter()
        self._lock = threading.Lock()
        # the LLM's cache over the last clip's speech prompt: the emotion question and the answers
        # about one clip read its system turn and speech tokens once (torch decoding)
        self.prefix_cache = PrefixCache()
        # the part every row of a label-scoring batch shares (the chat's system turn), kept from one
        # batch to the next: an NF4 LLM then makes one pass over its weights a batch, not two
        self.head_cache = PrefixCache()
        self.decoder = choose_decoder(self.config, self.device)
        self.llama_cpp = self._llama_cpp() if self.decoder == "llama_cpp" else None
        if self.llama_cpp is None:
            self.decoder = "torch"

    # ----- components -------------------------------------------------------------------
    def _llama_cpp(self) -> LlamaCppModel | None:
        """The GGUF in llama.cpp; under decoder auto a model that fails to load leaves torch decoding."""
        try:
            return load_for(self.llm, n_threads=self.config.threads or torch.get_num_threads(),
                            n_ctx=min(context_size(self.config), self._context_limit()))
        except (RuntimeError, ValueError, OSError) as e:
            if self.config.decoder != "auto":
                raise ConfigError(f"decoder 'llama_cpp' cannot load the GGUF: {e}") from None
            log.warning("llama.cpp did not load (%s); decoding on torch.", e)
            return None

    def _context_limit(self) -> int:
        return int(getattr(self.llm.model.config, "max_position_embeddings", 8192) or 8192)

    def _adapter(self, location: str | None):
        from pathlib import Path

        from ..config import ASSETS

        if location and Path(location) == ASSETS / "speech_llm" and not Path(location).exists():
            # Never a silently untrained adapter: its answers would be noise presented as ours.
            raise ConfigError(f"The shipped adapter checkpoint {location} is missing; restore assets/ from the "
                              "repository, or set adapter to None to run an untrained one (its answers are noise).")
        return build_adapter(location, llm_name=self.config.llm, llm_dim=self.llm.hidden_size,
                             embed_rms=self.llm.token_embedding_rms(), backbone_name=self.config.backbone,
                             backbone_dim=self.backbone.width, labels=self.config.labels, device=self.device)

    def _other_language_adapter(self):
        """The language router's adapter for clips Whisper base does not hear as English, or None.
        It must take the same features as the speech_llm adapter; its head reads Whisper base."""
        from pathlib import Path

        location = self.config.resolved_other_language_adapter()
        if not location:
            return None
        if not Path(location).exists() and self.config.other_language_adapter != "auto":
            raise ConfigError(f"The other-language adapter {location} does not exist; set "
                              "other_language_adapter to None to answer every clip with the one adapter.")
        other = self._adapter(location)
        mine, theirs = self.adapter.config, other.config
        if (theirs.backbone, theirs.prosody_version, theirs.lexical) != (mine.backbone, mine.prosody_version, mine.lexical):
            raise ConfigError(f"The other-language adapter {location} reads {theirs.backbone}, prosody "
                              f"v{theirs.prosody_version} and lexical={theirs.lexical!r}; the speech_llm adapter "
                              f"{mine.backbone}, v{mine.prosody_version} and {mine.lexical!r}. Both must read the same.")
        if theirs.head_backbone != EMBEDDED_WHISPER_BASE or mine.head_backbone not in ("", theirs.head_backbone):
            raise ConfigError(f"The other-language adapter {location} must have its emotion head on "
                              f"{EMBEDDED_WHISPER_BASE} (head_backbone), the Whisper the router's language ID runs on.")
        try:
            embedded_whisper_base_path()
        except ModelUnavailableError as e:
            if self.config.other_language_adapter != "auto":
                raise
            log.warning("No language router (%s): the English adapter answers every clip.", e)
            return None
        return other

    @functools.cached_property
    def neutral_adapter(self):
        from pathlib import Path

        location = self.config.neutral_adapter
        if not location or not Path(location).exists():
            return None
        adapter = self._adapter(location)
        if adapter.config.prosody_version != self.prosody_version:  # one feature pass feeds both
            raise ConfigError(f"The neutral_aligned adapter {location} reads prosody channel "
                              f"v{adapter.config.prosody_version}, the speech_llm adapter v{self.prosody_version}; "
                              "retrain one of them so that both read the same.")
        return adapter

    @property
    def prosody_version(self) -> int:
        """The prosody channel the speech_llm adapter was trained on, and so is fed."""
        return self.adapter.config.prosody_version

    @functools.cached_property
    def head_backbone(self) -> WhisperBackbone | None:
        """The second backbone the speech_llm adapter's emotion head reads (AdapterConfig.head_backbone;
        Whisper base, float32), or None: the shipped English adapter's head reads tiny.en's own states.
        A routed clip's head reads the language ID's own int8 pass instead (`_head_pass`)."""
        name = self.adapter.config.head_backbone
        return WhisperBackbone(name, self.config.threads, self.device) if name else None

    @functools.cached_property
    def language_id(self) -> WhisperBackbone | None:
        """The router's language ID: the other-language head's Whisper in int8 on one thread, in the side
        thread beside the main path (0.03-0.07 s a clip against 0.11-0.17 s in float32). Its p(English)
        differs from float32's by up to 0.17, but routes the same at 0.5 on every RAVDESS and Polish
        train and dev row and on 98 % of the v2 dev rows (results/language_id_dev.json). A routed clip's
        emotion head reads the pooled states of this same pass (results/router_dev/int8_head_states_dev.json)."""
        if self.other_adapter is None:
            return None
        return WhisperBackbone(self.other_adapter.config.head_backbone, 1, self.device, compute_type="int8")

    @functools.cached_property
    def _beside_side_pass(self) -> WhisperBackbone:
        """The backbone as features() runs it beside the side pass: an embedded CTranslate2 Whisper on one
        thread, as the side pass takes the other core (two OpenMP threads beside it lost time on 2 cores:
        0.11 against 0.09 s a clip). Its states are bit-identical to the backbone's; the ASR keeps
        `threads`, where the second thread pays (0.12 against 0.18 s). On one thread anyway, _ct2_whisper's
        cache hands back the backbone's own model."""
        if self.backbone._hf is not None:
            return self.backbone
        return WhisperBackbone(self.config.backbone, 1, self.device)

    @functools.cached_property
    def _side_thread(self):
        from concurrent.futures import ThreadPoolExecutor

        return ThreadPoolExecutor(1, thread_name_prefix="head-backbone")

    @functools.cached_property
    def transcriber(self) -> Transcriber:
        return Transcriber(self.config.asr, self.config.threads, self.device)

    @functools.cached_property
    def standalone_ser(self):
        from pathlib import Path

        from ..baselines.standalone_ser import StandaloneSER

        location = self.config.standalone_ser
        if not location or not (Path(location) / "standalone_ser.json").is_file():
            return None
        return StandaloneSER.load(location)

    @property
    def trained(self) -> bool:
        return bool(self.adapter.config.task_mix)

    def describe(self) -> dict:
        return {"llm": self.config.llm, "quantization": self.config.quantization, "device": self.device,
                "backbone": self.config.backbone, "adapter": self.config.adapter if self.trained else "fresh (untrained)",
                "other_language_adapter": (f"{self.config.resolved_other_language_adapter()} (p(English) < "
                                           f"{self.config.english_threshold})" if self.other_adapter else None),
                "labels": list(self.config.labels), "footprint_mb": round(self.llm.footprint_mb(), 1),
                "decoder": self.llama_cpp.describe() if self.llama_cpp else f"torch ({self.config.quantization})"}

    # ----- stages -----------------------------------------------------------------------
    def load(self, audio: AudioInput, sample_rate: int | None = None) -> np.ndarray:
        return load_audio(audio, max_duration_s=self.config.max_audio_s, sample_rate=sample_rate)

    def adapter_for(self, system: str, features: SpeechFeatures | None = None):
        """The adapter of a speech system (neutral_aligned's may be None: not shipped).
        speech_only reads the shipped adapter's speech tokens without its words. With the clip's
        `features`, speech_llm and speech_only follow the language router (routed())."""
        if system == "neutral_aligned":
            return self.neutral_adapter
        return self.other_adapter if features is not None and self.routed(features) else self.adapter

    def routed(self, features: SpeechFeatures) -> bool:
        """Whether the language router sends this clip to the other-language adapter."""
        return self._other_language(features.p_english)

    def _other_language(self, p_english: float | None) -> bool:
        """The router's rule: Whisper base hears the clip as English with p below english_threshold."""
        return self.other_adapter is not None and p_english is not None and p_english < self.config.english_threshold

    def heard_language(self, features: SpeechFeatures) -> str:
        """A line for the user: what the router heard and which adapter answers."""
        if self.other_adapter is None or features.p_english is None:
            return ""
        target = "the other-language adapter (head on Whisper base)" if self.routed(features) else "the English adapter"
        return f"Whisper base: p(English) = {features.p_english:.2f}, so {target} answers."

    def reads_words(self, system: str = "speech_llm") -> bool:
        """Whether this speech system's adapter also reads the ASR hypothesis (lexical="asr")."""
        if system == "speech_only":
            return False
        adapter = self.adapter_for(system)
        return adapter is not None and getattr(adapter.config, "lexical", "") == "asr"

    def features(self, audio: np.ndarray, transcribe: bool | None = None) -> SpeechFeatures:
        """Frozen features of a clip. `transcribe` (default: when an adapter reads words) adds
        the ASR hypothesis; label scoring never needs it."""
        if self.head_backbone is None and self.language_id is None:
            features = extract_features(self.backbone, audio, self.prosody_version)
        else:  # the head's encoder runs beside the single-threaded prosody and eGeMAPS of the first
            side = self._side_thread.submit(self._head_pass, audio)
            features = extract_features(self._beside_side_pass, audio, self.prosody_version)
            features.head_states, features.p_english = side.result()
        if transcribe is None:
            transcribe = self.reads_words("speech_llm") or self.reads_words("neutral_aligned")
        if transcribe:
            features.transcript = self.transcribe(audio, features)
        return features

    def _head_pass(self, audio: np.ndarray) -> tuple[np.ndarray | None, float | None]:
        """With a router, p(English) from the int8 language ID; a clip it routes gets the pooled states of
        that same pass for the other-language head (trained on float32 states; on the routed dev clips its
        speech_llm labels agree with float32's on 100 % of Polish and 97 % of v2 rows, and the UA is the
        same: results/router_dev/int8_head_states_dev.json). A clip kept on the English adapter needs
        states only when that adapter's head reads a second backbone (float32, `head_backbone`)."""
        p_english = None
        if self.language_id is not None:
            states = self.language_id.encode(audio)
            p_english = self.language_id.english_probability(states)
            if self._other_language(p_english):
                return pooled_states(states), p_english
        if self.head_backbone is None:
            return None, p_english
        return pooled_states(self.head_backbone.encode(audio)), p_english

    def features_many(self, clips: list[np.ndarray], transcribe: bool | None = None) -> list[SpeechFeatures]:
        """Features of several clips, two at a time: the single-threaded eGeMAPS and prosody
        of one clip overlap the backbone of the next (about 20 % faster on 2 cores)."""
        if len(clips) < 2:
            return [self.features(c, transcribe) for c in clips]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(lambda c: self.features(c, transcribe), clips))

    def transcribe(self, audio: np.ndarray, features: SpeechFeatures | None = None) -> str:
        """The clip's ASR words. With the clip's `features`, an embedded ASR that is also the backbone
        decodes their encoder states: the encoder runs once a turn, not twice (same words either way)."""
        shared = features is not None and self.config.asr == self.config.backbone == EMBEDDED_WHISPER
        return self.transcriber.transcribe(audio, features.backbone_states if shared else None)

    def speech_embeddings(self, features: list[SpeechFeatures], system: str = "speech_llm") -> list[torch.Tensor]:
        """Each clip's speech tokens from its system's adapter (the router's choice per clip)."""
        if self.adapter_for(system) is None:
            raise ValueError("The neutral_aligned adapter is not available; train it or set neutral_adapter.")
        with torch.no_grad():
            return [speech_embeddings(self.adapter_for(system, f), [f], self.device)[0] for f in features]

    # ----- prompts ----------------------------------------------------------------------
    def encode_prompts(self, inputs: list[PromptInput], *, system_prompt: str | None = None,
                       assistant_start: str = "", speech: list[torch.Tensor] | None = None) -> SplicedBatch:
        """Render each input with the chat template and splice in its speech embeddings."""
        system_prompt = self.resolve_system_prompt(system_prompt)
        prefixes, suffixes, speech_rows, shared = [], [], [], []
        needs_speech = [i for i, p in enumerate(inputs) if p.system in SPEECH_SYSTEMS]
        if speech is None and needs_speech:
            by_system: dict[str, list[int]] = {}
            for i in needs_speech:
                by_system.setdefault(inputs[i].system, []).append(i)
            speech = [None] * len(inputs)
            for system, rows in by_system.items():
                for i, emb in zip(rows, self.speech_embeddings([inputs[i].features for i in rows], system)):
                    speech[i] = emb
        for i, p in enumerate(inputs):
            if p.system in SPEECH_SYSTEMS:
                heard = self.heard_words(p)
                user = prompts.speech_turn(p.task, p.instruction, heard)
                parts = prompts.split_speech_chat(self.tokenizer, user, system_prompt, assistant_start)
                speech_rows.append(speech[i] if heard is None
                                   else self.adapter_for(p.system, p.features).with_lexical_prompt(speech[i]).detach())
                shared.append(speech[i].shape[0])
            else:
                user = self._text_user_turn(p)
                parts = prompts.ChatParts(prompts.render_chat(self.tokenizer, user, system_prompt, assistant_start), "")
                speech_rows.append(torch.zeros(0, self.llm.hidden_size))
                shared.append(None)
            prefixes.append(self.token_ids(parts.prefix))
            suffixes.append(self.token_ids(parts.suffix))
        return splice_speech(prefixes, speech_rows, suffixes, self.llm.embed_tokens, shared)

    def heard_words(self, p: PromptInput) -> str | None:
        """The ASR hypothesis a lexical adapter reads after the speech tokens (never for SER)."""
        if p.task not in prompts.LEXICAL_TASKS or not self.reads_words(p.system):
            return None
        if p.features is None or p.features.transcript is None:
            raise ValueError(f"The {p.system} adapter reads the ASR hypothesis too; extract the clip's "
                             "features with transcribe=True (SEmoLlama.features).")
        return p.features.transcript

    def resolve_system_prompt(self, system_prompt: str | None) -> str | None:
        """A user's system prompt, cleaned; else the configured one (None: the registry default)."""
        return prompts.sanitize_user_text(system_prompt) if system_prompt else self.config.system_prompt

    def _text_user_turn(self, p: PromptInput) -> str:
        transcript = prompts.sanitize_user_text(p.transcript or "")
        emotion = p.emotion if p.system in ("cascade", "oracle") else None
        if p.system in ("cascade", "oracle") and not emotion:
            raise ValueError(f"The {p.system} system needs an emotion label.")
        turn = prompts.text_turn(transcript, emotion)
        instruction = p.instruction if p.instruction is not None else prompts.TASK_INSTRUCTIONS[p.task]
        return turn + (f"\n{instruction}" if instruction else "")

    def token_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    # ----- generation -------------------------------------------------------------------
    def generate(self, inputs: list[PromptInput], options: DecodingOptions | None = None,
                 system_prompt: str | None = None, assistant_start: str = "",
                 speech: list[torch.Tensor] | None = None) -> list[str]:
        """Greedy (or sampled) answers; `speech` replaces the adapter's speech embeddings of the
        speech inputs (ablations: e.g. the frame tokens without the emotion token)."""
        options = options or DecodingOptions(max_new_tokens=self.config.max_new_tokens)
        batch = self.encode_prompts(inputs, system_prompt=system_prompt, assistant_start=assistant_start,
                                    speech=speech)
        if not options.guards_repeats:
            ids = [list(self._answer_tokens(tokens)) for tokens in self._token_streams(batch, options)]
            return [self.tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]
        return [_last(self._texts(tokens, options), "") for tokens in self._token_streams(batch, options)]

    def stream(self, prompt: PromptInput, options: DecodingOptions | None = None,
               system_prompt: str | None = None) -> Iterator[str]:
        """Yield the growing answer text as tokens arrive."""
        options = options or DecodingOptions(max_new_tokens=self.config.max_new_tokens)
        batch = self.encode_prompts([prompt], system_prompt=system_prompt)
        yield from self._texts(self._token_streams(batch, options)[0], options)

    def _texts(self, tokens: Iterator[int], options: DecodingOptions) -> Iterator[str]:
        """The growing answer text, token by token, up to the first stop token; with the loop
        guard (options.end_on_repeat) it ends where the answer starts repeating itself."""
        def growing():
            ids: list[int] = []
            for t in self._answer_tokens(tokens):
                ids.append(t)
                yield self.tokenizer.decode(ids, skip_special_tokens=True).strip()
        return until_repeat(growing()) if options.guards_repeats else growing()

    def _answer_tokens(self, tokens: Iterator[int]) -> Iterator[int]:
        """A row's tokens up to (not including) its first stop token, lazily (a stream reads
        them as they are decoded)."""
        return itertools.takewhile(lambda t: t not in self.stop_ids, tokens)

    def _token_streams(self, batch: SplicedBatch, options: DecodingOptions) -> list[Iterator[int]]:
        """Each row's generated token ids, lazily: llama.cpp decodes row by row (no padding),
        torch all rows at once over one cache (also when a prompt is too long for llama.cpp's context)."""
        if self.llama_cpp is not None and self.llama_cpp.fits(batch.inputs_embeds.shape[1], options.max_new_tokens):
            return [self.llama_cpp.tokens(row, options.max_new_tokens, self.stop_ids,
                                          token_picker(options, self.stop_ids))
                    for row in unpadded_rows(batch)]
        steps = decode(self.llm.model, batch.inputs_embeds, batch.attention_mask, self.stop_ids, options,
                       prefix=self.prefix_cache, split=batch.shared_ends[0])
        if batch.inputs_embeds.shape[0] == 1:
            return [(int(step[0]) for step in steps)]
        table = [step.tolist() for step in steps]   # rows finished early repeat a stop token
        return [iter([step[i] for step in table]) for i in range(batch.inputs_embeds.shape[0])]

    # ----- emotion ----------------------------------------------------------------------
    def label_token_ids(self, labels: tuple[str, ...]) -> list[list[int]]:
        return [self.token_ids(" " + label) for label in labels]

    def encode_ser_prompts(self, inputs: list[PromptInput], system_prompt: str | None = None,
                           speech: list[torch.Tensor] | None = None) -> SplicedBatch:
        """The SER question for each input, ending in the answer's start, "You sound"."""
        inputs = [PromptInput(p.system, p.features, p.transcript, p.emotion, task="ser") for p in inputs]
        return self.encode_prompts(inputs, system_prompt=system_prompt, assistant_start=prompts.SER_ANSWER_PREFIX,
                                   speech=speech)

    def predict_emotions(self, inputs: list[PromptInput], labels: tuple[str, ...] | None = None,
                         system_prompt: str | None = None,
                         speech: list[torch.Tensor] | None = None) -> list[EmotionPrediction]:
        """Score every label by the log-likelihood of "You sound <label>" after the SER question.

        Always on torch, whatever the decoder: one batched prompt pass here is 2-3x faster than
        llama.cpp reading one prompt per row (llama.cpp gains in decoding, not in reading prompts
        on this CPU); eval.bench measures how often the two agree."""
        labels = tuple(labels or self.config.labels)
        batch = self.encode_ser_prompts(inputs, system_prompt, speech)
        # The prefix cache saves torch answers about the same clip a second reading of its speech
        # tokens. With llama.cpp decoding no answer reads it, and one pass instead of two (prefix,
        # then rest) dequantizes every NF4 weight once instead of twice: ~0.1 s less a clip.
        prefix = self.prefix_cache if self.llama_cpp is None else None
        scores = label_log_likelihoods(self.llm.model, batch.inputs_embeds, batch.attention_mask,
                                       self.label_token_ids(labels), prefix=prefix,
                                       split=batch.shared_ends[0], head=self.head_cache).cpu()
        probs = torch.softmax(scores, dim=-1)
        return [EmotionPrediction(labels[int(p.argmax())], {l: float(v) for l, v in zip(labels, p)},
                                  {l: float(v) for l, v in zip(labels, s)}) for p, s in zip(probs, scores)]

    def emotion_head(self, features: list[SpeechFeatures]) -> list[dict[str, float]]:
        """The adapter's supervised emotion head alone (no LLM): its softmax over the adapter's
        labels, one clip at a time (so no clip's padding reaches another)."""
        if not self.adapter.config.labels:
            raise ValueError("emotion_head: the adapter has no emotion head labels (a fresh adapter).")
        out = []
        with torch.inference_mode():
            for f in features:
                adapter = self.adapter_for("speech_llm", f)
                logits = adapter.encode_all(*adapter_inputs(adapter, [f], self.device))[2]
                out.append(dict(zip(adapter.config.labels, torch.softmax(logits[0].float(), -1).cpu().tolist())))
        return out

    def standalone_emotion(self, audio: np.ndarray, features: SpeechFeatures | None = None) -> EmotionPrediction:
        """The cascade's SER; reuses the eGeMAPS functionals of `features` when given."""
        model = self.standalone_ser
        if model is None:
            raise ValueError("The standalone SER model is not available; train it with "
                             "`python -m semollama_core train-ser`.")
        if features is not None and features.utterance is not None:
            p = model.proba_from_features(features.utterance[None].astype(np.float64))[0]
        else:
            p = model.predict_proba([audio])[0]
        return EmotionPrediction(model.labels[int(np.argmax(p))], {l: float(v) for l, v in zip(model.labels, p)})

    # ----- the whole turn ---------------------------------------------------------------
    def respond_stream(self, audio: AudioInput, *, transcript: str | None = None,
                       systems: Sequence[str] = DEFAULT_TURN_SYSTEMS, options: DecodingOptions | None = None,
                       system_prompt: str | None = None, sample_rate: int | None = None) -> Iterator[TurnEvent]:
        """One turn, the only place one is walked (see turn.py): transcript, emotion,
        standalone SER, then each system's answer token by token, and TurnDone last."""
        options = options or DecodingOptions(max_new_tokens=self.config.max_new_tokens)
        return run_turn(self, audio, transcript=transcript, systems=tuple(systems), options=options,
                        system_prompt=system_prompt, sample_rate=sample_rate)

    def respond(self, audio: AudioInput, transcript: str | None = None, *, sample_rate: int | None = None,
                max_new_tokens: int | None = None, temperature: float = 0.0, system_prompt: str | None = None,
                systems: Sequence[str] = DEFAULT_TURN_SYSTEMS) -> RespondResult:
        """Everything the demo shows for one clip: transcript, emotion, the answers, timings."""
        options = DecodingOptions(max_new_tokens=max_new_tokens or self.config.max_new_tokens,
                                  temperature=temperature)
        for event in self.respond_stream(audio, transcript=transcript, systems=systems, options=options,
                                         system_prompt=system_prompt, sample_rate=sample_rate):
            if isinstance(event, TurnDone):
                return event.result
        raise RuntimeError("the turn ended without a result")

    # ----- scoring and inspection --------------------------------------------------------
    def response_nll(self, inputs: list[PromptInput], responses: list[str], *,
                     speech: list[torch.Tensor] | None = None) -> list[float]:
        """Teacher-forced NLL per response token of each response after its prompt (see scoring.py)."""
        return response_nll(self, inputs, responses, speech=speech)

    def capture_attention(self, audio: AudioInput, *, max_new_tokens: int | None = None,
                          system_prompt: str | None = None, sample_rate: int | None = None) -> AttentionCapture:
        """Attention of the frozen LLM for one speech_llm generation (see attention.py)."""
        clip = self.load(audio, sample_rate)
        options = DecodingOptions(max_new_tokens=max_new_tokens or self.config.max_new_tokens)
        return capture_attention(self, clip, options, system_prompt)


def load_system(config: SEmoConfig | None = None) -> SEmoLlama:
    return SEmoLlama(config or SEmoConfig.from_env())


def _last(items: Iterator[str], default: str) -> str:
    last = default
    for last in items:
        pass
    return last

