"""How far is the text pass from what its n-best holds? Oracle diagnostics of the deployed choice.

For a speech model and a labelled manifest (dev: labels are read, never trained on), each clip is decoded
as the text pass decodes it -- greedy plus an n-best of N samples, each with the text model's reading of
its transcript -- and, per N:

* ``oracle``: share of clips where *some* reading has the gold intent: no rescoring can do better;
* ``score``: the deployed score's accuracy (``Readings.choose``) at each weight, and the best one
  (``best``), against the greedy pass alone (``greedy_pass``: no samples, same grid);
* ``recoverable``: clips where a right reading exists and the score picks a wrong one, per engine and
  condition -- the part of the gap a better choice could still close;
* ``majority_vote`` and ``score_plus_vote``: self-consistency -- the draws' most frequent intent, and the
  score plus lambda * log(share of the draws that gave the reading's intent), best over the weights:
  does counting the draws help the choice?

    python -m assistant.nlu.diagnostics runs/main/sft/best data/generated/default/dev.jsonl --samples 8,16
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from assistant.config import ConfigError, json_command
from assistant.data.manifest import condition_of_utterance, engine_of
from assistant.nlu.second_pass import WEIGHTS, NluPass, _load_batch

VOTE_WEIGHTS = (0.25, 0.5, 1.0, 2.0, 4.0)      # lambda tried for the vote term


@dataclass
class Clip:
    """One clip's readings as (speech log-prob, text log-prob, intent, from the n-best?) and its draws' votes."""
    gold: str
    cell: str                                   # "engine/condition"
    options: list[tuple[float, float, str, bool]]
    votes: Counter

    def pick(self, weight: float, vote_weight: float = 0.0, samples: bool = True) -> str | None:
        total = sum(self.votes.values()) or 1
        best = None
        for speech_lp, text_lp, intent, sampled in self.options:
            if sampled and not samples:
                continue
            score = speech_lp + weight * text_lp
            if vote_weight:
                score += vote_weight * math.log(max(self.votes[intent] / total, 1e-3))
            if best is None or score > best[0]:                 # ties keep the earlier reading, as choose does
                best = (score, intent)
        return None if best is None else best[1]


@torch.no_grad()
def read_clips(model, utterances, teacher, samples: int, seed: int, batch_size: int = 16) -> list[Clip]:
    """Each clip's readings, decoded and scored as the deployed pass does (``NluPass.decode`` / ``readings``)."""
    nlu = NluPass(teacher, samples=samples, seed=seed)
    clips = []
    for start in tqdm(range(0, len(utterances), batch_size), desc=f"n-best of {samples}", unit="batch", disable=None):
        batch = utterances[start:start + batch_size]
        enc = model.encode(model.features(_load_batch(model, batch)))
        greedy, sampled = nlu.decode(model, enc)
        r = nlu.readings(model, enc, [c.frame for c in greedy], None, sampled)
        for i, u in enumerate(batch):
            options = [(float(r.speech_lp[i, col]), float(r.text_lp[i, col]), f.intent, False)
                       for col, f in ((0, r.speech[i]), (1, r.text[i])) if f is not None and r.speech[i] is not None]
            options += [(h.speech_lp, h.text_lp, h.frame.intent, True) for h in r.samples[i]]
            votes = Counter()
            for c in [greedy[i], *sampled[i]]:
                if c.frame is not None:
                    votes[c.frame.intent] += c.count
            clips.append(Clip(u.intent, f"{engine_of(u)}/{condition_of_utterance(u)}", options, votes))
    return clips


def summarise(clips: list[Clip]) -> dict:
    """The numbers the module docstring lists, for one n-best size."""
    def accuracy(**kw) -> float:
        return round(sum(c.pick(**kw) == c.gold for c in clips) / len(clips), 4)

    score = {f"w={w:g}": accuracy(weight=w) for w in WEIGHTS}
    best_w = max(WEIGHTS, key=lambda w: (score[f"w={w:g}"], -w))
    recoverable = Counter(c.cell for c in clips if c.pick(best_w) != c.gold and any(o[2] == c.gold for o in c.options))
    return {
        "oracle": round(sum(any(o[2] == c.gold for o in c.options) for c in clips) / len(clips), 4),
        "score": score,
        "best": {"weight": best_w, "accuracy": score[f"w={best_w:g}"]},
        "greedy_pass": max(accuracy(weight=w, samples=False) for w in WEIGHTS),
        "recoverable": {"total": sum(recoverable.values()), **dict(sorted(recoverable.items()))},
        "majority_vote": round(sum(bool(c.votes) and c.votes.most_common(1)[0][0] == c.gold for c in clips)
                               / len(clips), 4),
        "score_plus_vote": {f"lambda={v:g}": max(accuracy(weight=w, vote_weight=v) for w in WEIGHTS)
                            for v in VOTE_WEIGHTS},
    }


@dataclass
class NbestDiagnosticsConfig:
    model: str | None = field(default=None, metadata={"help": "a saved speech model folder (first positional argument)"})
    manifest: str | None = field(default=None, metadata={"help": "a labelled manifest, e.g. dev (second positional argument)"})
    samples: list[int] = field(default_factory=lambda: [8], metadata={"help": "n-best sizes, comma-separated"})
    seed: int = 0
    holdout_file: str | None = field(default=None, metadata={
        "help": "the corpus's holdout.json for the text model (none: the one next to the manifest)"})
    limit: int | None = field(default=None, metadata={"help": "the manifest's first N clips (none: all)"})

    def validate(self) -> None:
        if not self.model or not self.manifest:
            raise ValueError("pass MODEL MANIFEST, e.g. `python -m assistant.nlu.diagnostics runs/main/sft/best "
                             "data/generated/default/dev.jsonl`")
        if not self.samples or min(self.samples) < 1:
            raise ValueError(f"--samples must be n-best sizes >= 1, got {self.samples}")


def diagnose(cfg: NbestDiagnosticsConfig) -> dict:
    from pathlib import Path

    from assistant.data.manifest import read_manifest
    from assistant.model.slu import SLUModel
    from assistant.nlu.training import default_teacher
    from assistant.schema import load_schema

    utterances = read_manifest(cfg.manifest)[:cfg.limit]
    holdout = cfg.holdout_file or Path(cfg.manifest).with_name("holdout.json")
    teacher = default_teacher(load_schema(), holdout_file=holdout)
    model = SLUModel.from_pretrained(cfg.model).eval()
    return {"model": cfg.model, "manifest": cfg.manifest, "n": len(utterances), "seed": cfg.seed,
            "by_samples": {str(n): summarise(read_clips(model, utterances, teacher, n, cfg.seed)) for n in cfg.samples}}


def main(argv: list[str]) -> int:
    from assistant.data.manifest import ManifestError

    return json_command(NbestDiagnosticsConfig, "python -m assistant.nlu.diagnostics", __doc__, argv, diagnose,
                        (ConfigError, ManifestError), positional=("model", "manifest"))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
