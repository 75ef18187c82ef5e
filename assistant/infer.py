"""`assistant transcribe-and-classify PATH... [--model DIR] [--json]`

Files or folders; prints for each clip: transcript, intent, slots, confidence, the assistant's response
and the latency. A bad file gets its error line and the rest go on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

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


def cli(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="assistant transcribe-and-classify", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", help="audio files or folders")
    ap.add_argument("--model", default=None, help="model folder (default: what `assistant run` built)")
    ap.add_argument("--json", action="store_true", help="one JSON object per line")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--onnx", default=None, metavar="DIR",
                    help="run an `assistant export` folder on onnxruntime instead of PyTorch (about 2x faster "
                         "on CPU). The text second pass runs too when the export carries it (DIR/nlu), "
                         "without the stock-Whisper reading: the export folds the adapters in, so it has "
                         "no stock path")
    ap.add_argument("--int8", action="store_true", help="with --onnx: the int8-quantized graphs")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.int8 and not args.onnx:
        print("assistant transcribe-and-classify: --int8 needs --onnx DIR (an `assistant export` folder)",
              file=sys.stderr)
        return 2

    # torch and the models: after the argument checks and HF_HUB_OFFLINE
    from assistant.inference import predict_files
    from assistant.nlu import load_pipeline

    if args.onnx:
        from assistant.export import ExportError, OnnxSLU

        try:
            model = OnnxSLU(args.onnx, precision="int8" if args.int8 else "fp32")
        except ExportError as e:
            print(f"assistant transcribe-and-classify: {e}", file=sys.stderr)
            return 2
    else:
        model_dir, problem = resolve_model_dir(args.model)
        if problem:
            print(f"assistant transcribe-and-classify: {problem}", file=sys.stderr)
            return 2
        model = load_pipeline(model_dir)
        model.eval()
    empty = [p for p in args.paths if Path(p).is_dir() and not expand_paths([p])]
    for folder in empty:
        print(f"assistant transcribe-and-classify: {folder}: no audio files in this folder "
              f"(looked for {', '.join(sorted(AUDIO_SUFFIXES))})", file=sys.stderr)
    schema = load_schema()
    failures = len(empty)
    for pred in predict_files(model, expand_paths(args.paths), schema, batch_size=args.batch_size):
        failures += bool(pred.error)
        if args.json:
            print(json.dumps(pred.to_dict(), ensure_ascii=False), flush=True)
        else:
            print(format_prediction(pred), flush=True)
    return 1 if failures else 0
