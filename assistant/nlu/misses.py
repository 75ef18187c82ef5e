"""Misheard or misunderstood? Where a run's remaining intent errors come from.

For a run's per-clip predictions (``runs/main/test_predictions.jsonl``, written by `assistant run`) and the
labelled manifest they were made on, each wrong clip is one of:

* ``misheard``: the shipped transcript differs from the gold text (after ``normalize_text``);
* ``heard_right``: the transcript is the gold text, the intent is still wrong -- an understanding error;
  ``heard_right_text_model_wrong`` counts those where the text model, given the gold text itself, is wrong
  too (no choice between readings could fix them: the phrasing is beyond the text model).

and, as the ceiling of perfect hearing, the text model's intent accuracy on every clip's gold text (per
manifest part: field / novel phrasings), with the phrasings (templates) it reads worst.

    python -m assistant.nlu.misses runs/main/test_predictions.jsonl data/generated/default/test.jsonl
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from assistant.config import ConfigError, json_command
from assistant.metrics import accuracy_by, grouped_accuracy
from assistant.text import normalize_text


def classify_misses(predictions: list[dict], utterances, text_intents: dict[str, str]) -> dict:
    """The breakdown the module docstring lists. ``predictions``: rows with ``id``, ``intent`` and
    ``transcript``; ``utterances``: the manifest (gold intent, text, meta part / template);
    ``text_intents``: utterance id -> the text model's intent for its gold text."""
    by_id = {u.id: u for u in utterances}
    missing = [p["id"] for p in predictions if p["id"] not in by_id]
    if missing:
        raise ValueError(f"{len(missing)} prediction ids are not in the manifest (first {missing[0]!r}): "
                         "pass the manifest the predictions were made on")
    utts = [by_id[p["id"]] for p in predictions]
    counts: Counter = Counter()
    errors_by_part: Counter = Counter()
    for p, u in zip(predictions, utts):
        if p["intent"] == u.intent:
            continue
        counts["errors"] += 1
        errors_by_part[u.meta.get("part", "-")] += 1
        if normalize_text(p.get("transcript")) == normalize_text(u.text):
            counts["heard_right"] += 1
            counts["heard_right_text_model_wrong"] += text_intents[u.id] != u.intent
        else:
            counts["misheard"] += 1
    read_right = [text_intents[u.id] == u.intent for u in utts]
    templates = grouped_accuracy([u.meta.get("template", "-") for u in utts], read_right)
    worst = sorted((round(v["accuracy"], 4), k, v["n"]) for k, v in templates.items() if v["accuracy"] < 1)
    return {"n": len(predictions),
            "intent_accuracy": round(sum(p["intent"] == u.intent for p, u in zip(predictions, utts)) / len(utts), 4),
            "errors": counts["errors"], "misheard": counts["misheard"], "heard_right": counts["heard_right"],
            "heard_right_text_model_wrong": counts["heard_right_text_model_wrong"],
            "errors_by_part": dict(sorted(errors_by_part.items())),
            "text_model_on_gold_text": accuracy_by([u.meta.get("part", "-") for u in utts], read_right),
            "text_model_worst_phrasings": [{"template": k, "accuracy": a, "n": n} for a, k, n in worst[:10]]}


@dataclass
class MissesConfig:
    predictions: str | None = field(default=None, metadata={
        "help": "a run's per-clip predictions, e.g. runs/main/test_predictions.jsonl (first positional argument)"})
    manifest: str | None = field(default=None, metadata={
        "help": "the labelled manifest they were made on (second positional argument)"})
    holdout_file: str | None = field(default=None, metadata={
        "help": "the corpus's holdout.json for the text model (none: the one next to the manifest)"})

    def validate(self) -> None:
        if not self.predictions or not self.manifest:
            raise ValueError("pass PREDICTIONS MANIFEST, e.g. `python -m assistant.nlu.misses "
                             "runs/main/test_predictions.jsonl data/generated/default/test.jsonl`")


def read_predictions(path: str | Path) -> list[dict]:
    try:
        return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        raise ConfigError(f"{path} not found: `assistant run` writes <output_dir>/test_predictions.jsonl") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not JSON lines ({e}): pass a run's test_predictions.jsonl") from None


def misses(cfg: MissesConfig) -> dict:
    from assistant.data.manifest import read_manifest
    from assistant.nlu.training import default_teacher
    from assistant.schema import load_schema

    predictions = read_predictions(cfg.predictions)
    utterances = read_manifest(cfg.manifest)
    holdout = cfg.holdout_file or Path(cfg.manifest).with_name("holdout.json")
    teacher = default_teacher(load_schema(), holdout_file=holdout)
    read = teacher.predict([u.text for u in utterances])
    try:
        return classify_misses(predictions, utterances, {u.id: r[0] for u, r in zip(utterances, read)})
    except ValueError as e:
        raise ConfigError(str(e)) from None


def main(argv: list[str]) -> int:
    from assistant.data.manifest import ManifestError

    return json_command(MissesConfig, "python -m assistant.nlu.misses", __doc__, argv, misses,
                        (ConfigError, ManifestError), positional=("predictions", "manifest"))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
