"""Readings as candidates: the deployed second pass's frames join the speech model's samples.

A round can only teach what its candidates hold. The speech model's own samples rarely hold a frame it
does not already believe: in the main job's field-pool round (README, "RSFT in the main job") the right
frame was among 8 samples + greedy for 79 % of clips against 72 % for greedy alone, and the round
corrected 6 of 750 field clips. Two independent readers know more than the sampler:

    text   the text model's frame for each distinct decoded transcript (MiniLM, trained on the grammar's
           text and never on a dev/test phrasing; reads phrasings the speech model was not tuned on)
    stock  the text model's frame for stock Whisper's transcript (adapters off, its 30 s window; hears
           natural voices better than the fine-tuned model)

Each reading becomes a candidate like any other (the frame line, scored by the speech model given the
audio), marked with its ``source`` and ``count`` 0: it is not a draw from the policy, so the statistical
rule (exact over draws) never keeps it; best_of_n over the agreement reward then *is* the deployed text
pass (``assistant.nlu``) run over every sampled transcript and the stock one.
"""

from __future__ import annotations

from typing import Any, Sequence

from assistant.frames import Frame, format_frame, parse_frame
from assistant.model.candidate import Candidate
from assistant.model.interface import SpeechModel
from assistant.text import normalize_text

READING_SOURCES = ("text", "stock")


class ReadingError(ValueError):
    """A readings set-up that cannot work; the message says what to change."""


class Reader:
    """``reader(model, waves, decoded, ids) -> [[(frame line, source), ...] per utterance]``: the new
    readings of each utterance (none that repeats a decoded text or an earlier reading).

    Stock transcripts are kept per utterance id: the stock path is the pretrained model with the adapters
    off, the same in every round, so rounds after the first skip its 30 s-window decode."""

    def __init__(self, teacher: Any, sources: Sequence[str] = READING_SOURCES):
        unknown = sorted(set(sources) - set(READING_SOURCES))
        if unknown:
            raise ReadingError(f"readings {unknown} unknown; choose from {list(READING_SOURCES)}")
        if teacher is None:
            raise ReadingError("readings need the text model (assistant.nlu.default_teacher)")
        self.teacher = teacher
        self.sources = tuple(s for s in READING_SOURCES if s in sources)
        self.stock_by_id: dict[str, str] = {}

    def _frames(self, transcripts: list[str]) -> list[Frame]:
        return [Frame(intent=intent, slots=dict(slots), transcript=t)
                for t, (intent, slots, _) in zip(transcripts, self.teacher.predict(transcripts))]

    def stock_transcripts(self, model: SpeechModel, waves) -> list[str]:
        if not model.has_stock_path:      # no adapters: the "stock" prompt would not be the pretrained model
            return [""] * len(waves)
        return [normalize_text(t) for t in model.stock_greedy(model.stock_encode(waves))]

    def stock_of(self, model: SpeechModel, waves, ids: Sequence[str] | None) -> list[str]:
        """Stock transcripts of a batch, decoded once per utterance id (without ids: decoded now)."""
        if ids is None or not model.has_stock_path:
            return self.stock_transcripts(model, waves)
        missing = [i for i, u in enumerate(ids) if u not in self.stock_by_id]
        if missing:
            heard = self.stock_transcripts(model, [waves[i] for i in missing])
            self.stock_by_id.update(zip([ids[i] for i in missing], heard))
        return [self.stock_by_id[u] for u in ids]

    def __call__(self, model: SpeechModel, waves, decoded: Sequence[Sequence[Candidate]],
                 ids: Sequence[str] | None = None) -> list[list[tuple[str, str]]]:
        """``decoded``: per utterance, the speech model's candidates (``SpeechModel.generate``); ``ids``:
        the utterances' ids (their stock transcripts are decoded once)."""
        wanted: list[tuple[int, str, str]] = []           # (utterance, transcript, source)
        if "text" in self.sources:
            for i, cands in enumerate(decoded):
                seen = set()
                for c in cands:
                    parsed = parse_frame(c.text)
                    if parsed.valid and c.finished and parsed.frame.transcript not in seen:
                        seen.add(parsed.frame.transcript)
                        wanted.append((i, parsed.frame.transcript, "text"))
        if "stock" in self.sources:
            wanted += [(i, t, "stock") for i, t in enumerate(self.stock_of(model, waves, ids)) if t]
        out: list[list[tuple[str, str]]] = [[] for _ in decoded]
        if not wanted:
            return out
        taken = [{c.text for c in cands} for cands in decoded]
        for (i, _, source), frame in zip(wanted, self._frames([t for _, t, _ in wanted])):
            line = format_frame(frame)
            if line not in taken[i]:
                taken[i].add(line)
                out[i].append((line, source))
        return out
