"""The plain data every RSFT step passes on: candidates, their scores, and accept/reject decisions.

    generate -> list[list[Candidate]]   (one list per utterance)
    score    -> list[list[Scored]]      (rewards.score)
    accept   -> list[list[Decision]]    (accept.accept_all)

Each type round-trips through ``to_dict`` / ``from_dict`` (plain JSON values), so a step's output
can be written as JSONL (``write_records``), inspected by hand, and read back by the next step.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, TypeVar

from assistant.frames import Frame, ParseResult, frame_to_dict, parse_frame
from assistant.text import normalize_text


class RecordError(ValueError):
    """A persisted RSFT record that cannot be read; the message names the record and the fix."""


def _require(d: Any, keys: tuple[str, ...], kind: str) -> None:
    if not isinstance(d, dict):
        raise RecordError(f"{kind}: expected a JSON object, got {type(d).__name__}")
    missing = [k for k in keys if k not in d]
    if missing:
        raise RecordError(f"{kind} record is missing {missing}; it needs {list(keys)} "
                          f"(was it written by an older version? regenerate it)")


@dataclass(frozen=True)
class Candidate:
    """One decoder output for one utterance.

    ``logprob`` is the sum of the log-probabilities of ``token_ids`` under the model that sampled
    it; ``ref_logprob`` the same under a frozen reference model (None when not computed).
    Frozen, so the cached parse of ``text`` can never go stale.
    """

    utt_id: str
    index: int                      # position among this utterance's candidates
    text: str                       # the decoder string (see assistant.frames.format_frame)
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
        _require(d, ("utt_id", "index", "text"), "Candidate")
        ref = d.get("ref_logprob")
        return cls(utt_id=str(d["utt_id"]), index=int(d["index"]), text=str(d["text"]),
                   token_ids=[int(t) for t in d.get("token_ids") or []],
                   logprob=float(d.get("logprob", 0.0)),
                   ref_logprob=None if ref is None else float(ref), greedy=bool(d.get("greedy", False)),
                   finished=bool(d.get("finished", True)), count=int(d.get("count", 1)),
                   source=str(d.get("source", "sample")))


@dataclass
class Scored:
    """A candidate with each reward's value (``rewards``) and their weighted total (``reward``)."""

    candidate: Candidate
    rewards: dict[str, float]
    reward: float

    @property
    def utt_id(self) -> str:
        return self.candidate.utt_id

    @property
    def index(self) -> int:
        return self.candidate.index

    def to_dict(self) -> dict[str, Any]:
        return {"candidate": self.candidate.to_dict(), "rewards": {k: _json_float(v) for k, v in self.rewards.items()},
                "reward": _json_float(self.reward)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scored:
        _require(d, ("candidate", "rewards", "reward"), "Scored")
        return cls(candidate=Candidate.from_dict(d["candidate"]),
                   rewards={str(k): float(v) for k, v in (d["rewards"] or {}).items()}, reward=float(d["reward"]))


@dataclass
class Decision:
    """Whether candidate ``index`` of utterance ``utt_id`` is kept for training, and why.

    ``reason`` starts with the rule's name ("best_of_n: top-k"), so reports can count per rule.
    """

    utt_id: str
    index: int
    accepted: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"utt_id": self.utt_id, "index": self.index, "accepted": self.accepted, "reason": self.reason}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Decision:
        _require(d, ("utt_id", "index", "accepted", "reason"), "Decision")
        return cls(utt_id=str(d["utt_id"]), index=int(d["index"]), accepted=bool(d["accepted"]),
                   reason=str(d["reason"]))


def _json_float(x: float) -> float | str:
    """JSON has no NaN/inf; write them as strings that float() reads back."""
    x = float(x)
    return x if math.isfinite(x) else str(x)


Record = TypeVar("Record", Candidate, Scored, Decision)


def write_records(records: Iterable[Candidate | Scored | Decision], path: str | Path) -> Path:
    """One JSON object per line, written atomically (tmp + rename) so a crash leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as f:
        for r in records:
            f.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def read_records(path: str | Path, cls: type[Record]) -> list[Record]:
    path = Path(path)
    if not path.is_file():
        raise RecordError(f"{cls.__name__} file not found: {path} (run the RSFT step that writes it first)")
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(cls.from_dict(json.loads(line)))
        except json.JSONDecodeError as e:
            raise RecordError(f"{path}:{i}: not valid JSON ({e.msg}); one JSON object per line") from None
        except (RecordError, TypeError, ValueError) as e:
            raise RecordError(f"{path}:{i}: {e}") from None
    return out


def group_by_utterance(records: Iterable[Record], utt_ids: Iterable[str]) -> list[list[Record]]:
    """Regroup a flat record list into one list per utterance, in ``utt_ids`` order (index order within).

    Records of utterances not in ``utt_ids`` are an error: they usually mean the wrong file was read.
    """
    order = {u: i for i, u in enumerate(utt_ids)}
    groups: list[list[Record]] = [[] for _ in order]
    for r in records:
        if r.utt_id not in order:
            raise RecordError(f"record for utterance {r.utt_id!r} not in the manifest "
                              "(candidates and manifest come from different runs?)")
        groups[order[r.utt_id]].append(r)
    for g in groups:
        g.sort(key=lambda r: r.index)
    return groups
