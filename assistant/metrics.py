"""SLU metrics over plain frames: intent accuracy, slot F1, SLU-F1 (SLURP's definition), WER.

Pure functions over (gold, predicted) pairs, no model: evaluation, rewards and benchmarks share them.
Every text is compared after ``assistant.text.normalize_text`` (the grammar's spoken word form); word and
character alignments are jiwer's.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Mapping, Sequence

import jiwer

from assistant.text import normalize_text


def _edits(references: str | list[str], hypotheses: str | list[str], level: str = "word") -> tuple[int, int]:
    """(substitutions + deletions + insertions, reference length) between normalised strings (or equally
    long lists of them, summed), over words or characters (spaces count), by jiwer's alignment."""
    process = jiwer.process_words if level == "word" else jiwer.process_characters
    out = process(references, hypotheses)
    return out.substitutions + out.deletions + out.insertions, out.hits + out.substitutions + out.deletions


def wer(references: Sequence[str], hypotheses: Sequence[str | None]) -> float:
    """Corpus WER: total word edits / total reference words, both sides through
    ``assistant.text.normalize_text`` first.

    An empty hypothesis (None or "") costs one deletion per reference word; an empty reference costs one
    insertion per hypothesis word; with no reference words at all the edits are divided by 1. No pairs: 0.
    """
    references, hypotheses = list(references), list(hypotheses)
    if len(references) != len(hypotheses):
        raise ValueError(f"wer: {len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        return 0.0
    edits, words = _edits([normalize_text(r) for r in references], [normalize_text(h) for h in hypotheses])
    return edits / max(words, 1)


def _f1(tp: float, fp: float, fn: float) -> float:
    p = tp / (tp + fp) if tp + fp > 0 else 0.0
    r = tp / (tp + fn) if tp + fn > 0 else 0.0
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def slot_counts(gold: Mapping[str, str], pred: Mapping[str, str]) -> tuple[int, int, int]:
    """Exact (name, value) pairs: true positives, false positives, false negatives."""
    g = Counter((k, normalize_text(v)) for k, v in gold.items())
    p = Counter((k, normalize_text(v)) for k, v in pred.items())
    tp = sum((g & p).values())
    return tp, sum(p.values()) - tp, sum(g.values()) - tp


def _span_distance(gold: str, pred: str, level: str) -> float:
    edits, length = _edits(normalize_text(gold), normalize_text(pred), level)
    return min(1.0, edits / max(length, 1))


def slu_f1_counts(gold: Mapping[str, str], pred: Mapping[str, str]) -> tuple[float, float, float]:
    """SLURP's SLU-F1 accumulation (Bastianelli et al., 2020), word- and char-level summed.

    A predicted slot whose type is in the gold frame is a true positive whose filler distance
    (normalised word / character edit distance) is added to both FP and FN; a slot of a type the
    gold frame lacks is a false positive, a gold slot left unmatched a false negative.
    """
    tp = fp = fn = 0.0
    for level in ("word", "char"):
        remaining = list(gold.items())
        for ptype, pvalue in pred.items():
            matches = [i for i, (gtype, _) in enumerate(remaining) if gtype == ptype]
            if not matches:
                fp += 1
                continue
            best = min(matches, key=lambda i: _span_distance(remaining[i][1], pvalue, level))
            d = _span_distance(remaining[best][1], pvalue, level)
            tp += 1
            fp += d
            fn += d
            remaining.pop(best)
        fn += len(remaining)
    return tp, fp, fn


@dataclass
class FrameScore:
    n: int
    intent_accuracy: float
    frame_accuracy: float       # intent and every slot exact
    slot_f1: float
    slu_f1: float
    wer: float
    invalid_rate: float


def score_frames(gold: list[dict], pred: list[dict]) -> FrameScore:
    """gold/pred: dicts with intent, slots, text (pred may have valid=False)."""
    n = len(gold)
    if n == 0:
        return FrameScore(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    intent_ok = frame_ok = invalid = 0
    stp = sfp = sfn = 0
    utp = ufp = ufn = 0.0
    for g, p in zip(gold, pred):
        valid = p.get("valid", True)
        invalid += not valid
        p_slots = p.get("slots") or {} if valid else {}
        ok = valid and p.get("intent") == g["intent"]
        intent_ok += ok
        tp, fp, fn = slot_counts(g.get("slots") or {}, p_slots)
        stp, sfp, sfn = stp + tp, sfp + fp, sfn + fn
        frame_ok += ok and fp == 0 and fn == 0
        a, b, c = slu_f1_counts(g.get("slots") or {}, p_slots)
        utp, ufp, ufn = utp + a, ufp + b, ufn + c
    return FrameScore(
        n=n,
        intent_accuracy=intent_ok / n,
        frame_accuracy=frame_ok / n,
        slot_f1=_f1(stp, sfp, sfn) if stp + sfp + sfn > 0 else 1.0,
        slu_f1=_f1(utp, ufp, ufn) if utp + ufp + ufn > 0 else 1.0,
        wer=wer([g["text"] for g in gold], [p.get("transcript", "") for p in pred]),
        invalid_rate=invalid / n,
    )


def grouped_accuracy(keys: list[str], correct: list[bool]) -> dict[str, dict[str, float]]:
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for k, c in zip(keys, correct):
        totals[k][0] += int(c)
        totals[k][1] += 1
    return {k: {"accuracy": ok / n, "n": n} for k, (ok, n) in sorted(totals.items())}


def accuracy_by(keys: list[str], correct: list[bool], digits: int = 4) -> dict[str, float]:
    """``{"all": accuracy, key: accuracy per key}`` (``grouped_accuracy`` without the counts), rounded."""
    groups = {"all": {"accuracy": sum(map(bool, correct)) / len(correct)}, **grouped_accuracy(keys, correct)}
    return {k: round(v["accuracy"], digits) for k, v in groups.items()}
