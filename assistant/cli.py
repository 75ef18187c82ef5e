"""The ``assistant`` command. Thin: each subcommand lives in its own module as ``cli(argv) -> int``."""

from __future__ import annotations

import importlib
import sys

# name -> (module, one-line help). Modules are imported lazily so `assistant --help` is instant.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("assistant.main_job", "the main job: corpus -> supervised -> RSFT rounds -> test scores"),
    "synth": ("assistant.data.synth", "synthesise the spoken-intent corpus with real TTS voices"),
    "train": ("assistant.train", "supervised fine-tuning of the pretrained speech model"),
    "rsft": ("assistant.rsft.loop", "rejection-sampling fine-tuning rounds"),
    "evaluate": ("assistant.evaluate", "score a model on a manifest (JSONL, FSC CSV, SLURP JSONL)"),
    "transcribe-and-classify": ("assistant.infer", "transcript, intent, slots and response for audio files"),
    "bench": ("assistant.bench.run", "speed / accuracy benchmarks side by side with peers"),
    "export": ("assistant.export", "export the model for deployment (ONNX)"),
    "demo": ("assistant.demo", "web demo: upload or record a clip"),
    "convert": ("assistant.model.convert", "convert the packaged CTranslate2 Whisper into a transformers folder"),
    "experiment": ("assistant.rsft.experiment", "regenerate the RSFT results table"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: assistant COMMAND [options]   (assistant COMMAND --help for options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"assistant: unknown command '{name}'\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    from assistant.config import ConfigError

    code = 1
    try:
        code = int(module.cli(rest) or 0)
        return code
    except ConfigError as e:
        print(f"assistant {name}: config error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"assistant {name}: interrupted; everything written so far is kept, re-run to resume",
              file=sys.stderr)
        return 130
    finally:
        from assistant import distributed

        distributed.shutdown(ok=code == 0)


if __name__ == "__main__":
    sys.exit(main())
