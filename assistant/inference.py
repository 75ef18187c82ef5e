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
from assistant.model.interface import SpeechModel


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
    reader: str = "speech"             # whose reading won: "speech", "text" (NLU pass on our transcript),
                                       # "stock" (NLU pass on stock Whisper's transcript), "sample" / "sample
                                       # text" (a sampled frame of the n-best / the NLU pass on its transcript)
    stock_transcript: str = ""         # stock Whisper's transcript, when the pass decoded it
    stock_intent: str = ""             # the text model's reading of it: what "stock Whisper + our NLU" says
    stock_slots: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _confidence(logprob: float, n_tokens: int) -> float:
    return float(math.exp(logprob / max(n_tokens, 1))) if math.isfinite(logprob) else 0.0


@torch.inference_mode()
def predict_waves(model: SpeechModel, waves: list[torch.Tensor], schema=None, paths: list[str] | None = None,
                  max_new_tokens: int = 96, use_nlu: bool = True,
                  stock_transcripts: list[str] | None = None) -> list[Prediction]:
    """Greedy-decode a batch of 16 kHz waves into predictions.

    A model loaded with a text second pass (``model.nlu``, see assistant.nlu) lets it re-read each valid
    transcript -- and, when the pass uses the stock reading, stock Whisper's transcript too (decoded here
    unless ``stock_transcripts`` gives it); with an n-best (``NluPass.samples``) also the speech model's
    sampled frames and their transcripts. ``use_nlu=False`` scores the speech model alone."""
    paths = paths or [f"<clip {i}>" for i in range(len(waves))]
    start = time.perf_counter()
    enc = model.encode(model.features(waves))
    nlu = model.nlu if use_nlu else None
    if nlu is not None:        # greedy, plus the n-best's samples when the pass reads them
        greedy, sampled = nlu.decode(model, enc, max_new_tokens)
    else:
        greedy, sampled = [c[0] for c in model.generate(enc, num_samples=0, greedy=True, max_new_tokens=max_new_tokens)], None
    out, frames = [], []
    for path, best in zip(paths, greedy):
        # Cut off at max_new_tokens: the slots may be truncated, so the frame cannot be trusted.
        pred = Prediction(path=path, raw=best.text, valid=best.frame is not None,
                          confidence=_confidence(best.logprob, len(best.token_ids)))
        out.append(pred)
        frames.append(best.frame)
    readers = ["speech"] * len(out)
    if nlu is not None:
        if nlu.uses_stock and model.has_stock_path and stock_transcripts is None:
            stock_transcripts = model.stock_greedy(model.stock_encode(waves))
        readings = nlu.readings(model, enc, frames, stock_transcripts if nlu.uses_stock else None, sampled)
        frames, readers = readings.choose(nlu.weight, nlu.stock_bonus)
        for pred, heard, reading in zip(out, stock_transcripts or [], readings.stock):
            pred.stock_transcript = heard
            if reading is not None:
                pred.stock_intent, pred.stock_slots = reading.intent, dict(reading.slots)
    latency = (time.perf_counter() - start) / max(len(waves), 1)
    for pred, frame, reader in zip(out, frames, readers):
        pred.latency_s = latency
        if frame is not None:
            pred.valid = True
            pred.intent, pred.slots, pred.transcript = frame.intent, dict(frame.slots), frame.transcript
            pred.reader = reader
            if schema is not None:
                pred.response = schema.render_response(pred.intent, pred.slots)
    return out


def predict_files(model: SpeechModel, paths: Iterable[str | Path], schema=None, batch_size: int = 8,
                  max_seconds: float | None = None, use_nlu: bool = True,
                  stock: dict[str, str] | None = None) -> Iterator[Prediction]:
    """Yield one Prediction per path, in the order of `paths` (callers zip them with their utterances);
    unreadable files yield a Prediction with `error` set. ``stock``: path -> stock transcript, decoded
    once elsewhere (e.g. for several models on the same clips)."""
    max_seconds = max_seconds or float(model.context_seconds)
    # Unreadable files wait in the batch with the readable ones, so the output order is the input order.
    batch: list[tuple[str, torch.Tensor | Prediction]] = []
    n_waves = 0

    def flush():
        nonlocal n_waves
        waves = [(p, w) for p, w in batch if isinstance(w, torch.Tensor)]
        heard = [stock[p] for p, _ in waves] if stock is not None and all(p in stock for p, _ in waves) else None
        decoded = iter(predict_waves(model, [w for _, w in waves], schema, [p for p, _ in waves],
                                     use_nlu=use_nlu, stock_transcripts=heard) if waves else [])
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
