"""The one prompt registry. The emotion-aware and baseline text prompts differ in one field.

A chat turn is rendered with the LLM's own chat template; the user turn holds either text
or the speech embeddings (a placeholder split out here and filled in by `embeds`).
"""
from __future__ import annotations

from dataclasses import dataclass

# Short on purpose: it is part of every training sequence on a 2-core CPU.
# Chosen on dev sentences (12 sentences x 4 emotions, emotion-conditioned text prompts): "You are
# a warm assistant" made the 135M LLM talk about itself ("as a warm assistant, I'm designed to...")
# in 10 % of answers; this one in none, and its answers fit the stated feeling more often.
DEFAULT_SYSTEM_PROMPT = ("Reply to the speaker in one or two short sentences, without emoji. "
                         "Show that you noticed how they feel.")
SPEECH_PLACEHOLDER = "<<<SPEECH>>>"

# How an emotion is stated in the emotion-conditioned prompt (the alignment target).
EMOTION_PHRASES = {
    "neutral": "in a calm, neutral voice", "happy": "in a happy, cheerful voice",
    "sad": "in a sad, downcast voice", "angry": "in an angry, irritated voice",
    "fearful": "in a fearful, anxious voice", "surprised": "in a surprised voice",
    "disgust": "in a disgusted voice", "calm": "in a calm voice",
}

# Instructions that follow the speech in the user turn, one per alignment task.
TASK_INSTRUCTIONS = {
    "respond": "",
    "asr": "Repeat exactly what I just said.",
    "ser": "How do I sound? Name my emotion.",
    "caption": "Describe how I said that: my tone, pitch, pace and loudness.",
}
# Tasks for which an adapter with lexical="asr" also reads the clip's ASR hypothesis. SER does
# not: how the speaker sounds is in the speech tokens, and label scoring stays ASR-free.
LEXICAL_TASKS = ("respond", "respond_neutral", "asr", "caption")
# Label scoring reads the answer to the SER instruction after this fixed start.
SER_ANSWER_PREFIX = "You sound"


# How the emotion-conditioned prompt states the feeling: "<words> (I feel sad.)". Chosen on dev over
# "[I say this in a sad, downcast voice.] <words>": the answers then fit the stated feeling more
# often (sentence-embedding proxy, 0.52-0.54 against 0.40-0.42 top-1 over 4 emotions, n=48 each).
FEELING_WORDS = {"neutral": "calm", "happy": "happy", "sad": "sad", "angry": "angry", "fearful": "afraid",
                 "surprised": "surprised", "disgust": "disgusted", "calm": "calm"}


def feeling_word(emotion: str) -> str:
    return FEELING_WORDS.get(emotion, emotion)


def emotion_phrase(emotion: str) -> str:
    return EMOTION_PHRASES.get(emotion, f"in a {emotion} voice")


def text_turn(transcript: str, emotion: str | None = None) -> str:
    """User turn for text systems: the transcript, with the emotion stated or not (one field)."""
    transcript = " ".join(transcript.split())
    if emotion is None:
        return transcript
    return f"{transcript} (I feel {feeling_word(emotion)}.)"


def ser_text_turn(transcript: str, emotion: str) -> str:
    """Text prompt whose answer is the SER target, in the LLM's own words."""
    return f"{text_turn(transcript, emotion)}\n{TASK_INSTRUCTIONS['ser']}"


def caption_text_turn(transcript: str, emotion: str, prosody: str) -> str:
    return (f'I said "{transcript}" {emotion_phrase(emotion)}, with {prosody}. '
            f"{TASK_INSTRUCTIONS['caption']} Answer in one sentence that starts with \"You\".")


def speech_turn(task: str = "respond", instruction: str | None = None, heard: str | None = None) -> str:
    """User turn for speech systems: the placeholder, the words heard (lexical adapters), then
    the task's instruction if any."""
    if instruction is None:
        if task not in TASK_INSTRUCTIONS:
            raise ValueError(f"Unknown task {task!r}; known: {', '.join(TASK_INSTRUCTIONS)}.")
        instruction = TASK_INSTRUCTIONS[task]
    instruction = instruction.strip()
    words = " ".join(sanitize_user_text(heard).split()) if heard else ""
    return SPEECH_PLACEHOLDER + (f" {words}" if words else "") + (f"\n{instruction}" if instruction else "")


@dataclass(frozen=True)
class ChatParts:
    """Text around the speech placeholder, after the chat template."""
    prefix: str
    suffix: str


def render_chat(tokenizer, user_content: str, system_prompt: str | None,
                assistant_start: str = "") -> str:
    messages = [{"role": "system", "content": system_prompt or DEFAULT_SYSTEM_PROMPT},
                {"role": "user", "content": user_content}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text + assistant_start


def split_speech_chat(tokenizer, user_content: str, system_prompt: str | None,
                      assistant_start: str = "") -> ChatParts:
    text = render_chat(tokenizer, user_content, system_prompt, assistant_start)
    if text.count(SPEECH_PLACEHOLDER) != 1:
        raise ValueError("The user turn must hold the speech placeholder exactly once.")
    prefix, suffix = text.split(SPEECH_PLACEHOLDER)
    return ChatParts(prefix, suffix)


def sanitize_user_text(text: str, max_chars: int = 2000) -> str:
    """Drop control characters and the chat template's special markers from typed text."""
    cleaned = "".join(ch for ch in str(text) if ch in "\n\t" or ch.isprintable())
    for marker in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", SPEECH_PLACEHOLDER,
                   "<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"):
        cleaned = cleaned.replace(marker, "")
    return cleaned[:max_chars]
