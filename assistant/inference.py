"""Turn audio into frames with a trained SLU model: transcript, intent, slots, response, confidence.

Shared by `evaluate`, `transcribe-and-classify`, the web demo and the benchmarks.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import torch

from assistant.audio import AudioError, load_audio
from assistant.frames import parse_frame


@dataclass
class Prediction:
    path: str
    raw: str = ""                      # the decoder's string, before parsing
    valid: bool = False
    intent: str = ""
    slots: dict[str, str] = field(default_factory=dict)
    transcript: str = ""
    confidence: float = 0.0            # per-token geometric-mean probability of the decoded string
    response: str = ""
    latency_s: float = 0.0
    error: str = ""                    # set when the file could not be read

    def to_dict(self) -> dict:
        return asdict(self)


def _confidence(logprob: float, n_tokens: int) -> float:
    return float(math.exp(logprob / max(n_tokens, 1))) if math.isfinite(logprob) else 0.0


@torch.inference_mode()
def predict_waves(model, waves: list[torch.Tensor], schema=None, paths: list[str] | None = None,
                  max_new_tokens: int = 96) -> list[Prediction]:
    """Greedy-decode a batch of 16 kHz waves into predictions."""
    paths = paths or [f"<clip {i}>" for i in range(len(waves))]
    start = time.perf_counter()
    enc = model.encode(model.features(waves))
    candidates = model.generate(enc, num_samples=0, greedy=True, max_new_tokens=max_new_tokens)
    latency = (time.perf_counter() - start) / max(len(waves), 1)
    out = []
    for path, cands in zip(paths, candidates):
        best = cands[0]
        parsed = parse_frame(best.text)
        pred = Prediction(path=path, raw=best.text, valid=parsed.valid, latency_s=latency,
                          confidence=_confidence(best.logprob, len(best.token_ids)))
        if parsed.valid and parsed.frame is not None:
            pred.intent, pred.slots, pred.transcript = parsed.frame.intent, dict(parsed.frame.slots), parsed.frame.transcript
            if schema is not None:
                pred.response = schema.render_response(pred.intent, pred.slots)
        out.append(pred)
    return out


def predict_files(model, paths: Iterable[str | Path], schema=None, batch_size: int = 8,
                  max_seconds: float | None = None) -> Iterator[Prediction]:
    """Yield one Prediction per path; unreadable files yield a Prediction with `error` set."""
    max_seconds = max_seconds or float(getattr(model, "context_seconds", 30.0))
    batch: list[tuple[str, torch.Tensor]] = []

    def flush():
        if batch:
            yield from predict_waves(model, [w for _, w in batch], schema, [p for p, _ in batch])
            batch.clear()

    for path in paths:
        try:
            wave = load_audio(path, max_seconds=max_seconds)
        except AudioError as e:
            yield Prediction(path=str(path), error=str(e))
            continue
        batch.append((str(path), wave))
        if len(batch) >= batch_size:
            yield from flush()
    yield from flush()
