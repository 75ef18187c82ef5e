"""Slot values <-> word spans: where a frame's slot values sit in a transcript, as BIO tags.

The text model tags words (``O``, ``B-<slot>``, ``I-<slot>``); these helpers turn a frame's slot values
into word spans and tags (training targets, scoring a given frame) and tags back into spans (reading a
frame). Words are the normalised words of ``assistant.text.text_words``, on both sides.
"""

from __future__ import annotations

from typing import Sequence

from assistant.text import text_words


def _occurrences(words: Sequence[str], value: Sequence[str]) -> list[int]:
    n = len(value)
    return [i for i in range(len(words) - n + 1) if n and list(words[i:i + n]) == list(value)]


def locate_slots(words: Sequence[str], slots: dict[str, str], span_gain=None
                 ) -> tuple[dict[str, tuple[int, int]], list[str]]:
    """Place each slot value as a whole-word span in ``words``; spans never overlap.

    Longer values are placed first (so "seven thirty" is not shadowed by "seven"). Among several
    occurrences the first free one wins, or the one with the highest ``span_gain(slot, start, end)``.
    Returns ({slot: (start, end)}, [slots whose value is not in the words]).
    """
    spans: dict[str, tuple[int, int]] = {}
    missing: list[str] = []
    taken = [False] * len(words)
    order = sorted(slots.items(), key=lambda kv: (-len(text_words(kv[1])), kv[0]))
    for name, value in order:
        value_words = text_words(value)
        free = [i for i in _occurrences(words, value_words) if not any(taken[i:i + len(value_words)])]
        if not free:
            missing.append(name)
            continue
        start = max(free, key=lambda i: span_gain(name, i, i + len(value_words))) if span_gain else free[0]
        end = start + len(value_words)
        spans[name] = (start, end)
        taken[start:end] = [True] * (end - start)
    return spans, missing


def bio_tags(n_words: int, spans: dict[str, tuple[int, int]]) -> list[str]:
    """The BIO tag of each of ``n_words`` words, given the slots' word spans."""
    tags = ["O"] * n_words
    for name, (start, end) in spans.items():
        tags[start] = f"B-{name}"
        for i in range(start + 1, end):
            tags[i] = f"I-{name}"
    return tags


def spans_from_tags(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """BIO -> [(slot, start, end)]; a stray I- (after O or another slot) starts a new span."""
    out: list[tuple[str, int, int]] = []
    for i, tag in enumerate(tags):
        if tag == "O":
            continue
        kind, name = tag.split("-", 1)
        if kind == "I" and out and out[-1][0] == name and out[-1][2] == i:
            out[-1] = (name, out[-1][1], i + 1)
        else:
            out.append((name, i, i + 1))
    return out
