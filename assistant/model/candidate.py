"""``Candidate``: one decoded output of a speech model, the unit every later step passes on.

The speech model fills the decoder fields (``SpeechModel.generate``: text, token ids, log-prob, greedy,
finished, count); RSFT's generate step adds where it belongs (``utt_id``, ``index``) and the reference
model's score (``ref_logprob``), and appends readings (``source``). It round-trips through ``to_dict`` /
``from_dict`` (plain JSON values), so RSFT writes it as JSONL (``assistant.rsft.types.write_records``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from assistant.frames import Frame, ParseResult, frame_to_dict, parse_frame
from assistant.text import normalize_text


class RecordError(ValueError):
    """A persisted record (candidate, score, decision) that cannot be read; the message names it and the fix."""


def require_keys(d: Any, keys: tuple[str, ...], kind: str) -> None:
    """Raise RecordError unless ``d`` is a JSON object holding ``keys`` (``kind`` names the record)."""
    if not isinstance(d, dict):
        raise RecordError(f"{kind}: expected a JSON object, got {type(d).__name__}")
    missing = [k for k in keys if k not in d]
    if missing:
        raise RecordError(f"{kind} record is missing {missing}; it needs {list(keys)} "
                          f"(was it written by an older version? regenerate it)")


@dataclass(frozen=True)
class Candidate:
    """One decoder output for one utterance.

    ``logprob`` is the sum of the log-probabilities of ``token_ids`` (incl. <|endoftext|> when
    ``finished``) under the model that decoded it, over its restricted vocabulary at temperature 1;
    ``ref_logprob`` the same under a frozen reference model (None when not computed).
    Straight from the decoder, ``utt_id`` is empty and ``index`` is the position among the utterance's
    candidates. Frozen, so the cached parse of ``text`` can never go stale.
    """

    utt_id: str = ""                # the utterance (set by RSFT's generate step)
    index: int = 0                  # position among this utterance's candidates
    text: str = ""                  # the decoder string (see assistant.frames.format_frame)
    token_ids: list[int] = field(default_factory=list)
    logprob: float = 0.0
    ref_logprob: float | None = None
    greedy: bool = False
    finished: bool = True           # False: cut off at max_new_tokens (never a usable frame)
    count: int = 1                  # sampled draws that gave this text (0: only the greedy row did, or a reading)
    source: str = "sample"          # "sample": the speech model decoded it (sampled or greedy); "text" / "stock":
                                    # the text model's reading of a decoded / stock Whisper transcript (not a draw)

    @cached_property
    def parsed(self) -> ParseResult:
        return parse_frame(self.text)

    @property
    def frame(self) -> Frame | None:
        """The parsed frame, or None when the output is not a well-formed, finished frame."""
        return self.parsed.frame if self.parsed.valid and self.finished else None

    def frame_key(self, transcript: bool = True) -> tuple | None:
        """What makes two candidates the same answer: intent, slots (and transcript), normalised.
        None when the output is not a well-formed frame."""
        f = self.frame
        if f is None:
            return None
        key = (f.intent, tuple(sorted((k, normalize_text(v)) for k, v in f.slots.items())))
        return key + (normalize_text(f.transcript),) if transcript else key

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    def to_dict(self) -> dict[str, Any]:
        # ``frame`` is written for people reading the JSONL; from_dict re-parses ``text`` instead.
        return {"utt_id": self.utt_id, "index": self.index, "text": self.text,
                "token_ids": list(self.token_ids), "logprob": self.logprob,
                "ref_logprob": self.ref_logprob, "greedy": self.greedy, "finished": self.finished,
                "count": self.count, "source": self.source,
                "frame": frame_to_dict(self.frame) if self.frame is not None else None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Candidate:
        require_keys(d, ("utt_id", "index", "text"), "Candidate")
        ref = d.get("ref_logprob")
        return cls(utt_id=str(d["utt_id"]), index=int(d["index"]), text=str(d["text"]),
                   token_ids=[int(t) for t in d.get("token_ids") or []],
                   logprob=float(d.get("logprob", 0.0)),
                   ref_logprob=None if ref is None else float(ref), greedy=bool(d.get("greedy", False)),
                   finished=bool(d.get("finished", True)), count=int(d.get("count", 1)),
                   source=str(d.get("source", "sample")))
