"""The plain data every RSFT step passes on: candidates, their scores, and accept/reject decisions.

    generate -> list[list[Candidate]]   (one list per utterance)
    score    -> list[list[Scored]]      (rewards.score)
    accept   -> list[list[Decision]]    (accept.accept_all)

Each type round-trips through ``to_dict`` / ``from_dict`` (plain JSON values), so a step's output
can be written as JSONL (``write_records``), inspected by hand, and read back by the next step.
``Candidate`` (and ``RecordError``) is the speech model's own (``assistant.model.candidate``): what
``generate`` decodes is what RSFT scores, keeps and writes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, TypeVar

from assistant.model.candidate import Candidate, RecordError, require_keys

__all__ = ["Candidate", "Decision", "Record", "RecordError", "Scored", "group_by_utterance", "read_records",
           "write_records"]


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
        require_keys(d, ("candidate", "rewards", "reward"), "Scored")
        return cls(candidate=Candidate.from_dict(d["candidate"]),
                   rewards={str(k): float(v) for k, v in (d["rewards"] or {}).items()}, reward=float(d["reward"]))


@dataclass
class Decision:
    """Whether candidate ``index`` of utterance ``utt_id`` is kept for training, and why.

    ``reason`` starts with the rule's name ("best_of_n: top-k"), so reports can count per rule.
    ``weight``: the kept candidate's loss weight in fine-tuning (< 1 where the acceptance step trusted it
    less, see ``accept.abstain``); ``scope``: what it teaches, "frame" (all of it) or "intent" (only the
    intent's tokens, ``accept.abstain_scope``).
    """

    utt_id: str
    index: int
    accepted: bool
    reason: str
    weight: float = 1.0
    scope: str = "frame"

    @property
    def whole(self) -> bool:
        """Kept at full weight, all of the frame: a label the rule fully trusts."""
        return self.accepted and self.weight >= 1.0 and self.scope == "frame"

    def to_dict(self) -> dict[str, Any]:
        return {"utt_id": self.utt_id, "index": self.index, "accepted": self.accepted, "reason": self.reason,
                "weight": self.weight, **({"scope": self.scope} if self.scope != "frame" else {})}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Decision:
        require_keys(d, ("utt_id", "index", "accepted", "reason"), "Decision")
        return cls(utt_id=str(d["utt_id"]), index=int(d["index"]), accepted=bool(d["accepted"]),
                   reason=str(d["reason"]), weight=float(d.get("weight", 1.0)), scope=str(d.get("scope", "frame")))


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
