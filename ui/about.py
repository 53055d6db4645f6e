"""About: the paper, the models, the shipped checkpoint and its measured metrics, the limits."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from semollama_core import ASSETS, SEmoConfig

from .backend import markdown_text

PAPER = """\
## SEmoLlama

An open, runnable implementation of **Kang et al., “Frozen Large Language Models Can Perceive
Paralinguistic Aspects of Speech”** ([arXiv 2410.01162](https://arxiv.org/abs/2410.01162),
Interspeech 2025; the system is called SpeechEmotionLlama there).

A speech encoder turns your voice into vectors that stand where text would in the chat prompt of a
**frozen** instruction-tuned LLM. The encoder is trained by *behavioural alignment*: given the speech,
the LLM should answer what it answers to the transcript **with the emotion stated**. The LLM's weights
never change. In the paper the speech tokens carry both what was said and how. Ours (a small encoder
trained on synthetic speech) do not carry the words reliably, so by default the LLM also reads the
words of a Whisper ASR: the default system is a soft cascade, and `speech_only` below is the paper's
configuration.

**What the LLM reads in each system** (the same frozen LLM in all; only its input differs)
- *SEmoLlama* (`speech_llm`, the default): the trained encoder's speech tokens, one emotion token
  from the encoder's supervised emotion head, and the Whisper ASR words after them.
- *Speech only* (`speech_only`): the same speech tokens and emotion token, no words: the paper's
  configuration.
- *Emotion head* (`emotion_head`): no LLM; the encoder's supervised emotion head alone (emotion
  only). It shows how much of the emotion accuracy the head gives before the LLM reads anything.
- *Text-only* (`text_only`): the Whisper ASR words alone, no emotion.
- *Cascade* (`cascade`): the ASR words plus the label of a standalone speech emotion model (openSMILE
  eGeMAPS features + a linear classifier), in the emotion-conditioned text prompt.
- *How do I sound?* (the emotion chart in Talk): the LLM scores each emotion label after that
  question, reading the emotion token and the speech tokens only, never the words.

**Two adapters and a language router.** Whisper base (multilingual) listens to each clip and gives
p(English). From 0.5 up, the English adapter answers (`assets/speech_llm`, its emotion head on Whisper
tiny.en); below, the other-language adapter does (`assets/speech_llm_multilingual`: the same recipe and
data, its emotion head on Whisper base, which carries emotion into languages it never trained on far
better). Talk shows under the predicted emotion what the router heard and which adapter answered.
"""

# >>> MEASURED FIGURES GO HERE <<<
# What each system scores on real (not synthetic) speech, filled in from the committed eval
# JSONs: each figure with its 95 % interval, its split and the command that produced it.
# Shown under the systems above; while empty, About says no figure on real speech is given here.
MEASURED_ON_REAL_SPEECH = """\
Shipped adapters: `assets/speech_llm` (sha256 `b65e2378...f57a`) for clips the router hears as English, and
`assets/speech_llm_multilingual` (sha256 `28f22fdc...d144`) for the rest. Both were aligned on synthetic
corpus v2 + RAVDESS actors 1-10, and their emotion heads were refitted on those plus Polish speakers m1-m2.
4 core labels (neutral, happy, sad, angry); chance UA 0.25 (0.5 on the Polish clips, which hold only angry
and neutral). UA with a 95 % bootstrap interval resampling clips.

| real acted speech, never trained or tuned on | n | routed to the other adapter | SEmoLlama (`speech_llm`) | emotion head alone | standalone eGeMAPS | text_only |
|---|---|---|---|---|---|---|
| RAVDESS actors 13-16 (English) | 112 | 0 | **0.734** [0.651, 0.814] | 0.703 [0.619, 0.785] | 0.445 [0.369, 0.529] | 0.250 |
| Polish speakers m4-m5, angry and neutral | 120 | 120 | **0.817** [0.748, 0.882] | 0.867 [0.800, 0.925] | 0.525 [0.435, 0.613] | 0.000 |
| CREMA-D actors 1001-1002 (English) | 8 | 0 | 0.250 [0.0, 0.5] | 0.250 | 0.375 | 0.250 |
| EmoDB speaker 03 (German) | 4 | 4 | 0.000 | 0.000 | 0.500 | 0.000 |

On RAVDESS it beats the standalone model by +0.289 [0.161, 0.406]. The router added +0.100 [0.024, 0.183]
on the Polish clips (0.717 with the English adapter alone). The 8 CREMA-D and 4 EmoDB clips are too few to
say much (CREMA-D: 2 right; both angry clips come out "happy"; EmoDB: none right). Expect it to fail on
voices, languages and recording conditions unlike those it learnt from: its emotion head refitted without
RAVDESS scores 0.359 on RAVDESS dev speakers (n=56, 0.729 with RAVDESS), and fitted on synthetic voices
alone 0.281 (chance 0.25): the synthetic voices teach it nothing measurable that carries to people
(`scripts/cross_corpus_dev.py`). On a Polish speaker neither adapter had
heard (dev, simulated), the router scored 0.400 [0.289, 0.517], against 0.083 for the English adapter alone.
"""

# One line for the Talk tab: what the default learnt from, and how well it hears real people.
TRAINED_ON = ("**The default** learnt from synthetic voices (corpus v2), real acted English speech "
              "(RAVDESS actors 1-10; non-commercial licence) and, for its emotion head, two Polish speakers. "
              "On real actors it never heard it names the emotion with UA 0.734 [0.651, 0.814] (RAVDESS, "
              "n=112, chance 0.25) and 0.817 [0.748, 0.882] on Polish angry/neutral words (n=120, chance 0.5; "
              "these go to its other-language adapter); on other voices it can fail (CREMA-D: 2 of 8; "
              "EmoDB German: 0 of 4). Details in About.")

LIMITS = """\
## Honest limits
- The embedded models are tiny so that the demo runs offline on a CPU: SmolLM2-135M-Instruct (4-bit)
  writes short, sometimes odd answers; Whisper tiny.en makes transcription errors and knows only English,
  so in another language the ASR words the LLM reads are noise and only the speech tokens carry anything.
  The paper used Llama 3 8B Instruct and a 1B-parameter Conformer trained on 2,500 hours of speech.
- The default encoder is trained on **synthetic** acted speech (corpus v2: espeak-ng, MBROLA, flite,
  festival, RHVoice and Piper voices, the emotion only in prosody, every other effect drawn independently
  of the label) **and on real acted English speech**: RAVDESS actors 1-10 (each clip also once through a
  random microphone, room, noise and codec), in four classes: neutral, happy, sad, angry; its emotion head
  also heard two Polish speakers (angry and neutral single words, CC BY 4.0). Its measured
  accuracy on real voices it never heard is above; real, spontaneous emotion is subtler and more varied
  than acted emotion, and other languages and recording conditions are harder still.
- **Licence:** because they learnt from RAVDESS (CC BY-NC-SA 4.0), both shipped speech adapters inherit
  RAVDESS's **non-commercial, share-alike** terms (and the MBROLA voices' non-commercial terms), and the
  Polish emotional speech corpus's CC BY 4.0 attribution (Miesikowska & Swisulski 2020). `OPEN=1 bash scripts/train_default.sh` builds a variant without any non-commercial data.
- Emotion probabilities are the LLM's label scores after a softmax, not calibrated confidences.
- Attention maps show where the model looks, not why it answers as it does.
- Nothing here is a tool for judging people's feelings: do not use it to make decisions about anyone.
"""


def model_card(path: Path = ASSETS / "speech_llm" / "README.md") -> str:
    """The shipped checkpoint's card (training data and measured metrics), if there is one."""
    if not path.is_file():
        return ("## The shipped checkpoint\nNo trained checkpoint is shipped with this copy "
                f"(no model card at assets/speech_llm/README.md): SEmoLlama runs a freshly initialised "
                "encoder, so its answers and emotion scores are noise. Train one and restart the app.")
    text = path.read_text(encoding="utf-8", errors="replace")
    if text.startswith("---"):  # drop the Hub's YAML front matter
        parts = text.split("---", 2)
        text = parts[2] if len(parts) == 3 else text
    return "## The shipped checkpoint\n" + text.strip()


def measured_markdown(figures: str = MEASURED_ON_REAL_SPEECH) -> str:
    """The measured figures on real speech, or a plain note that none are given here yet."""
    if figures.strip():
        return "## Measured on real speech\n" + figures.strip()
    return ("## Measured on real speech\nNo figures on real speech are given here yet; the model card "
            "below reports what was measured on synthetic speech.")


def configuration_markdown(config: SEmoConfig) -> str:
    return ("## The models in this app\n"
            f"- Frozen LLM: {markdown_text(config.llm)}, quantization {markdown_text(config.quantization)}\n"
            f"- Speech backbone: {markdown_text(config.backbone)} (frozen) and ASR: {markdown_text(config.asr)}\n"
            f"- Encoder (adapter) checkpoint: {markdown_text(config.adapter)}\n"
            f"- Emotion labels: {markdown_text(', '.join(config.labels))}")


def build_about_tab(config: SEmoConfig) -> None:
    gr.Markdown(PAPER)
    gr.Markdown(measured_markdown(), elem_id="about-measured")
    gr.Markdown(configuration_markdown(config))
    gr.Markdown(model_card(), elem_id="about-model-card")
    gr.Markdown(LIMITS)
