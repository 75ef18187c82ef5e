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
        # Cut off at max_new_tokens: the slots may be truncated, so the frame cannot be trusted.
        finished = getattr(best, "finished", True)
        pred = Prediction(path=path, raw=best.text, valid=parsed.valid and finished, latency_s=latency,
                          confidence=_confidence(best.logprob, len(best.token_ids)))
        if pred.valid and parsed.frame is not None:
            pred.intent, pred.slots, pred.transcript = parsed.frame.intent, dict(parsed.frame.slots), parsed.frame.transcript
            if schema is not None:
                pred.response = schema.render_response(pred.intent, pred.slots)
        out.append(pred)
    return out


def predict_files(model, paths: Iterable[str | Path], schema=None, batch_size: int = 8,
                  max_seconds: float | None = None) -> Iterator[Prediction]:
    """Yield one Prediction per path, in the order of `paths` (callers zip them with their utterances);
    unreadable files yield a Prediction with `error` set."""
    max_seconds = max_seconds or float(getattr(model, "context_seconds", 30.0))
    # Unreadable files wait in the batch with the readable ones, so the output order is the input order.
    batch: list[tuple[str, torch.Tensor | Prediction]] = []
    n_waves = 0

    def flush():
        nonlocal n_waves
        waves = [(p, w) for p, w in batch if isinstance(w, torch.Tensor)]
        decoded = iter(predict_waves(model, [w for _, w in waves], schema, [p for p, _ in waves]) if waves else [])
        for _, item in batch:
            yield next(decoded) if isinstance(item, torch.Tensor) else item
        batch.clear()
        n_waves = 0

    for path in paths:
        try:
            batch.append((str(path), load_audio(path, max_seconds=max_seconds)))
            n_waves += 1
        except AudioError as e:
            batch.append((str(path), Prediction(path=str(path), error=str(e))))
        if n_waves >= batch_size:
            yield from flush()
    yield from flush()
