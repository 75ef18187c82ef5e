"""`assistant transcribe-and-classify PATH... [--model DIR | --onnx DIR [--int8]] [--json]`

Files or folders; prints for each clip: transcript, intent, slots, confidence, the assistant's response
and the latency. A bad file gets its error line and the rest go on.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from assistant.config import parse_command
from assistant.paths import resolve_model_dir
from assistant.schema import load_schema

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au", ".opus"}
# Recordings libsndfile cannot decode still get their line (an error with the ffmpeg fix), not silence.
AUDIO_SUFFIXES |= {".webm", ".m4a", ".mp4", ".aac", ".wma", ".amr", ".3gp"}


def expand_paths(paths: list[str]) -> list[str]:
    """Folders expand to the audio files inside them (recursively, sorted); files pass through."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in AUDIO_SUFFIXES)
        else:
            out.append(str(p))
    return out


def format_prediction(p) -> str:
    if p.error:
        return f"{p.path}\n  error: {p.error}"
    if not p.valid:
        return (f"{p.path}\n  could not understand (model output not a valid frame: {p.raw!r})\n"
                f"  latency     {p.latency_s * 1000:.0f} ms")
    slots = ", ".join(f"{k}={v}" for k, v in p.slots.items()) or "-"
    return (f"{p.path}\n  transcript  {p.transcript}\n  intent      {p.intent}\n  slots       {slots}\n"
            f"  confidence  {p.confidence:.3f}\n  response    {p.response}\n"
            f"  latency     {p.latency_s * 1000:.0f} ms")


@dataclass
class InferConfig:
    paths: list[str] = field(default_factory=list, metadata={"help": "audio files or folders: positional "
                                                                      "arguments, or --paths a.wav,b.wav"})
    model: str | None = field(default=None, metadata={"help": "model folder (default: what `assistant run` built)"})
    json: bool = field(default=False, metadata={"help": "one JSON object per line"})
    batch_size: int = field(default=1, metadata={"help": "clips decoded together"})
    onnx: str | None = field(default=None, metadata={
        "help": "an `assistant export` folder, run on onnxruntime instead of PyTorch (about 2x faster on CPU). The "
                "text second pass runs too when the export carries it (DIR/nlu), without the stock-Whisper "
                "reading: the export folds the adapters in, so it has no stock path"})
    int8: bool = field(default=False, metadata={"help": "with --onnx: the int8-quantized graphs"})

    def validate(self) -> None:
        if not self.paths:
            raise ValueError("no audio given: pass files or folders, e.g. "
                             "`assistant transcribe-and-classify clip.wav recordings/`")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.int8 and not self.onnx:
            raise ValueError("--int8 needs --onnx DIR (an `assistant export` folder)")


def load_model(cfg: InferConfig):
    """The PyTorch model or the ONNX export ``cfg`` names, or (None, why not)."""
    from assistant.model.onnx_runtime import ExportError
    from assistant.nlu import load_pipeline       # torch and both models: after the argument checks

    if cfg.onnx:
        try:
            return load_pipeline(cfg.onnx, runtime="onnx-int8" if cfg.int8 else "onnx").eval(), None
        except ExportError as e:
            return None, str(e)
    model_dir, problem = resolve_model_dir(cfg.model)
    if problem:
        return None, problem
    return load_pipeline(model_dir).eval(), None


def cli(argv: list[str]) -> int:
    cfg = parse_command(InferConfig, "assistant transcribe-and-classify", __doc__, argv, positional=("paths",))

    from assistant.inference import predict_files   # torch: after the argument checks and HF_HUB_OFFLINE

    model, problem = load_model(cfg)
    if problem:
        print(f"assistant transcribe-and-classify: {problem}", file=sys.stderr)
        return 2
    empty = [p for p in cfg.paths if Path(p).is_dir() and not expand_paths([p])]
    for folder in empty:
        print(f"assistant transcribe-and-classify: {folder}: no audio files in this folder "
              f"(looked for {', '.join(sorted(AUDIO_SUFFIXES))})", file=sys.stderr)
    schema = load_schema()
    failures = len(empty)
    for pred in predict_files(model, expand_paths(cfg.paths), schema, batch_size=cfg.batch_size):
        failures += bool(pred.error)
        if cfg.json:
            print(json.dumps(pred.to_dict(), ensure_ascii=False), flush=True)
        else:
            print(format_prediction(pred), flush=True)
    return 1 if failures else 0
