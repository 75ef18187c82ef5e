"""`assistant synth`: build the spoken-intent corpus with real offline TTS voices.

    assistant synth --profile default            # 5500 clips, ~150 voices, ~5 minutes on 2 cores
    assistant synth --profile smoke --out-dir /tmp/c --workers 1
    python -m assistant.data.synth --list-voices

    from assistant.config import load_config
    summary = run_synth(load_config(SynthConfig, profile="smoke", out_dir="/tmp/c"))

Precedence: dataclass defaults < profile preset (for the fields it sets) < YAML < flags/keywords.

Output (``out_dir``, default ``generated_dir()/<profile>``)::

    train/<id>.flac  pool/…  dev/…  test/…       16 kHz mono FLAC
    train.jsonl pool.jsonl dev.jsonl test.jsonl  manifests (assistant.data.manifest format)
    summary.json                                 counts, hours, voices, intents, timing

Splits hold out speakers AND phrasings: every person (a recorded speaker, an espeak timbre in any
accent, a derived Kokoro speaker) is in one split only. The corpus describes a team's situation:

    train   labelled: the team's own recordings of the grammar's *seen* phrasings
    pool    unlabelled *field* audio for RSFT: other speakers, Kokoro (natural) voices as often as in
            dev/test, rooms; half of it says *field* phrasings (users' ways of speaking train lacks)
    dev     the field: its own speakers; *field* and *novel* phrasings
    test    the same field distribution, other speakers again

Each intent's held-out templates are split into field (the pool says other sentences of them) and
novel (no training text and no pool clip), so test reports a `field` and a `novel` part (manifest
``meta.part``); no sentence, clip or speaker of dev/test is in the pool. ``pool`` lines keep their
labels for scoring but carry ``"labels_hidden": true``. holdout.json records the lists.

Each clip is a pure function of the config and its plan entry (seeded TTS, seeded
augmentation), so any number of workers gives the same corpus. Clips are written atomically
and carry their plan key in the FLAC comment: a re-run skips every clip that is already there
and the manifests are rebuilt from the plan, so an interrupted run loses nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import multiprocessing
import os
import sys
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import soundfile as sf

from ..config import ConfigError, add_dataclass_arguments, parse_config
from ..paths import generated_dir
from . import tts
from .augment import SAMPLE_RATE, AugmentConfig, ClipTooLong, augment, check_range, condition_of, resample
from .hf import write_audiofolder_metadata
from .manifest import Utterance, write_jsonl

log = logging.getLogger(__name__)

SPLITS = ("train", "pool", "dev", "test")
SYNTH_VERSION = 1      # bump when a change to the pipeline should invalidate existing clips
_MAX_LOGGED_FAILURES = 20

# Profile presets. A field left unset (None) takes its profile's value; anything given explicitly
# (YAML, flag, keyword) wins. "default" is the main job.
PROFILES: dict[str, dict[str, Any]] = {
    "default": {
        # train 3000: twice 1500 left dev intent accuracy equal but cut dev WER 0.109 -> 0.081 and lifted
        # the final system (with the text pass) on dev 0.87 -> 0.8925. dev/test do not depend on train_size.
        "train_size": 3000, "pool_size": 1500, "dev_size": 400, "test_size": 600, "intents": [],
        "espeak_variants": 0, "espeak_accents_per_variant": 2, "babble_clips": 12,
        # Kokoro costs ~1.2 s of one core per second of audio (espeak ~0.01): 700 neural clips in all.
        # The pool is field audio: Kokoro speaks it as often as dev/test (train keeps 0.1: the team's own
        # recordings), and half of it uses the field phrasings that dev/test share with it.
        "kokoro_speakers": 40, "kokoro_share": [0.1, 0.25, 0.25, 0.25], "pool_field_share": 0.5,
    },
    "smoke": {  # seconds: a handful of clips per split, used by the tests
        "train_size": 16, "pool_size": 8, "dev_size": 8, "test_size": 8,
        "intents": ["activate_lights_kitchen", "increase_volume_none", "alarm_set", "weather_query"],
        "espeak_variants": 8, "espeak_accents_per_variant": 1, "babble_clips": 4,
        "kokoro_speakers": 8, "kokoro_share": [0.125, 0.25, 0.25, 0.25], "pool_field_share": 0.5,
    },
    "large": {
        "train_size": 8000, "pool_size": 8000, "dev_size": 1500, "test_size": 2500, "intents": [],
        "espeak_variants": 0, "espeak_accents_per_variant": 4, "babble_clips": 24,
        "kokoro_speakers": 80, "kokoro_share": [0.25, 0.5, 0.4, 0.4], "pool_field_share": 0.5,
    },
}


@dataclass
class SynthConfig(AugmentConfig):
    profile: str = field(default="default", metadata={"help": f"size preset: {list(PROFILES)}"})
    out_dir: str | None = field(default=None, metadata={"help": "output folder (default: generated_dir()/<profile>)"})
    seed: int = field(default=0, metadata={"help": "one seed for the plan, voices and every clip"})
    workers: int = field(default=2, metadata={"help": "processes synthesising in parallel"})
    engines: list[str] = field(default_factory=list, metadata={
        "help": f"TTS engines to use, of {list(tts.ENGINES)} (default: the pip-installed ones, "
                f"{list(tts.PIP_ENGINES)}, so every machine builds the same corpus; system voices such as "
                "flite and festival join only when listed here)"})
    intents: list[str] | None = field(default=None, metadata={"help": "intents to cover ([] = all in the schema; "
                                                                     "unset = the profile's)"})
    train_size: int | None = field(default=None, metadata={"help": "clips in train (labelled; unset = the profile's)"})
    pool_size: int | None = field(default=None, metadata={"help": "clips in pool (unlabelled for RSFT)"})
    dev_size: int | None = field(default=None, metadata={"help": "clips in dev"})
    test_size: int | None = field(default=None, metadata={"help": "clips in test"})
    holdout_fraction: float = field(default=0.35, metadata={
        "help": "share of each intent's templates kept for dev/test"})
    min_seen_templates: int = field(default=3, metadata={"help": "templates per intent that train/pool keep at least"})
    field_fraction: float = field(default=0.5, metadata={
        "help": "share of each intent's held-out templates that are *field* phrasings: the users' ways of "
                "speaking, heard in the unlabelled pool and in dev/test but never in train; the rest are "
                "*novel* (dev/test only)"})
    pool_field_share: float | None = field(default=None, metadata={
        "help": "share of pool clips that say field phrasings (the rest say train's phrasings; unset = the "
                "profile's)"})
    voice_fractions: list[float] = field(default_factory=lambda: [0.4, 0.3, 0.12, 0.18],
                                         metadata={"help": "share of speakers per split (train, pool, dev, test)"})
    espeak_variants: int | None = field(default=None, metadata={"help": "espeak timbres to use (0 = all "
                                                                        "human-sounding ones)"})
    espeak_accents_per_variant: int | None = field(default=None, metadata={"help": "English accents each espeak "
                                                                                   "timbre speaks"})
    espeak_rate_range: list[float] = field(default_factory=lambda: [150.0, 200.0],
                                           metadata={"help": "espeak speaking rate, words per minute"})
    espeak_pitch_range: list[float] = field(default_factory=lambda: [35.0, 65.0],
                                            metadata={"help": "espeak base pitch (0-100)"})
    recorded_share: float = field(default=0.15, metadata={"help": "share of each split's non-Kokoro clips spoken by "
                                                                  "recorded (piper/flite/festival) voices when it has any"})
    kokoro_speakers: int | None = field(default=None, metadata={"help": "synthetic Kokoro speakers derived from "
                                                                        "jf_alpha / jf_nezumi"})
    kokoro_share: list[float] | None = field(default=None, metadata={
        "help": "share of each split's clips (train, pool, dev, test) spoken by Kokoro speakers"})
    max_seconds: float = field(default=6.0, metadata={"help": "longest clip; longer speech is sped up or dropped"})
    babble_clips: int | None = field(default=None, metadata={"help": "TTS clips per split that babble noise is "
                                                                     "mixed from"})
    schema: str | None = field(default=None, metadata={"help": "schema YAML (default data/schema.yaml)"})
    grammar: str | None = field(default=None, metadata={"help": "grammar YAML (default data/grammar.yaml)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        for name, value in PROFILES.get(self.profile, {}).items():
            if getattr(self, name) is None:
                setattr(self, name, list(value) if isinstance(value, list) else value)

    def validate(self) -> None:
        super().validate()
        if self.profile not in PROFILES:
            raise ValueError(f"unknown profile {self.profile!r}; choose from {list(PROFILES)}")
        unknown = [e for e in self.engines if e not in tts.ENGINES]
        if unknown:
            raise ValueError(f"unknown engine(s) {unknown}; choose from {list(tts.ENGINES)}")
        if self.workers < 1:
            raise ValueError("workers must be >= 1")
        if min(self.sizes().values()) < 1:
            raise ValueError("train_size, pool_size, dev_size and test_size must each be >= 1")
        if len(self.voice_fractions) != 4 or min(self.voice_fractions) <= 0:
            raise ValueError("voice_fractions must be 4 positive numbers (train, pool, dev, test)")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ValueError("holdout_fraction must be between 0 and 1")
        if not 0.0 <= self.field_fraction <= 1.0 or not 0.0 <= self.pool_field_share <= 1.0:
            raise ValueError("field_fraction and pool_field_share must be between 0 and 1")
        if not 0.0 <= self.recorded_share <= 1.0:
            raise ValueError("recorded_share must be between 0 and 1")
        if self.max_seconds <= 0.5:
            raise ValueError("max_seconds must be > 0.5")
        check_range("espeak_rate_range", self.espeak_rate_range)
        check_range("espeak_pitch_range", self.espeak_pitch_range)
        if self.espeak_variants < 0 or self.espeak_accents_per_variant < 1:
            raise ValueError("espeak_variants must be >= 0 and espeak_accents_per_variant >= 1")
        if self.kokoro_speakers < 0:
            raise ValueError("kokoro_speakers must be >= 0")
        if len(self.kokoro_share) != 4 or not all(0.0 <= x <= 1.0 for x in self.kokoro_share):
            raise ValueError("kokoro_share must be 4 numbers in [0, 1] (train, pool, dev, test)")

    def sizes(self) -> dict[str, int]:
        return {"train": self.train_size, "pool": self.pool_size, "dev": self.dev_size, "test": self.test_size}

    def output_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir else generated_dir() / self.profile

    def augment_config(self) -> AugmentConfig:
        return AugmentConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(AugmentConfig)})


# ============================================================================ the plan


@dataclass
class PlanItem:
    id: str
    split: str
    text: str
    intent: str
    slots: dict[str, str]
    template: str
    voice: tts.Voice
    seed: int
    key: str = ""
    part: str = "seen"     # the phrasing: seen (train's templates), field (pool + dev/test), novel (dev/test only)

    def path(self, out_dir: Path) -> Path:
        return out_dir / self.split / f"{self.id}.flac"


def _rng(seed: int, *keys: str | int) -> np.random.Generator:
    """A generator that depends only on the seed and the keys (stable across runs and machines)."""
    words = [int(k) if isinstance(k, int) else zlib.crc32(str(k).encode()) for k in keys]
    return np.random.default_rng(np.random.SeedSequence([seed, *words]))


def _allocate(total: int, weights: list[float], at_least_one: bool = False) -> list[int]:
    """Split `total` into integer parts proportional to weights (largest remainder)."""
    weights = [max(0.0, float(w)) for w in weights]
    if not weights or total <= 0 or sum(weights) == 0:
        return [0] * len(weights)
    counts = [0] * len(weights)
    if at_least_one and total >= len(weights):
        counts = [1] * len(weights)
        total -= len(weights)
    exact = [total * w / sum(weights) for w in weights]
    floors = [int(math.floor(x)) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (floors[i] - exact[i], i))
    for i in order[: total - sum(floors)]:
        floors[i] += 1
    return [c + f for c, f in zip(counts, floors)]


def select_voices(cfg: SynthConfig) -> list[tts.Voice]:
    """The voices of this corpus: recorded voices plus espeak timbres, each in a few accents."""
    engines = cfg.engines or list(tts.PIP_ENGINES)
    voices = [v for v in tts.list_voices(engines) if v.engine != "kokoro"]
    if "kokoro" in engines and cfg.kokoro_speakers and tts.list_voices(["kokoro"]):
        voices += tts.kokoro_speakers(cfg.kokoro_speakers, seed=cfg.seed)
    if cfg.engines:
        missing = tts.engine_problems([e for e in cfg.engines if not any(v.engine == e for v in voices)])
        if missing:
            raise ConfigError("engines: " + "; ".join(f"{e}: {why}" for e, why in missing.items()))
    espeak = [v for v in voices if v.engine == "espeak"]
    chosen = [v for v in voices if v.engine != "espeak"]
    if espeak:
        variants = sorted({v.params["variant"] for v in espeak}, key=tts.ESPEAK_VARIANTS.index)
        rng = _rng(cfg.seed, "espeak-variants")
        if cfg.espeak_variants:
            variants = [variants[i] for i in sorted(rng.permutation(len(variants))[: cfg.espeak_variants])]
        by_variant: dict[str, list[tts.Voice]] = {}
        for v in espeak:
            by_variant.setdefault(v.params["variant"], []).append(v)
        for variant in variants:
            options = by_variant[variant]
            picks = _rng(cfg.seed, "espeak-accents", variant).permutation(len(options))
            chosen += [options[i] for i in sorted(picks[: cfg.espeak_accents_per_variant])]
    if not chosen:
        raise ConfigError("no TTS voice works on this machine; pip install espeakng-loader "
                          "(see `assistant synth --list-voices`)")
    return chosen


def speaker_group(voice: tts.Voice) -> str:
    """What splits keep together: an espeak timbre (all its accents), a recorded or synthetic person."""
    if voice.engine == "espeak":
        return f"espeak-variant:{voice.params['variant']}"
    return f"person:{voice.person}"


def voice_family(voice: tts.Voice) -> str:
    """Families are dealt to splits separately, so each split gets its share of each kind of voice."""
    return voice.engine if voice.engine in ("espeak", "kokoro") else "recorded"


def assign_voices(voices: list[tts.Voice], cfg: SynthConfig) -> dict[str, list[tts.Voice]]:
    """Deal speaker groups to splits by voice_fractions, espeak and recorded groups separately."""
    groups: dict[str, list[tts.Voice]] = {}
    for v in voices:
        groups.setdefault(speaker_group(v), []).append(v)
    by_split: dict[str, list[tts.Voice]] = {s: [] for s in SPLITS}
    for family in ("espeak", "recorded", "kokoro"):
        keys = sorted(k for k in groups if voice_family(groups[k][0]) == family)
        if not keys:
            continue
        keys = [keys[i] for i in _rng(cfg.seed, "assign", family).permutation(len(keys))]
        counts = _allocate(len(keys), cfg.voice_fractions, at_least_one=True)
        start = 0
        for split, count in zip(SPLITS, counts):
            for key in keys[start: start + count]:
                by_split[split] += groups[key]
            start += count
    empty = [s for s in SPLITS if not by_split[s]]
    if empty:
        raise ConfigError(f"not enough voices for splits {empty}: {len(groups)} speaker groups for 4 splits; "
                          "use more engines or espeak_variants")
    return by_split


def hold_out_templates(grammar: Any, intents: list[str], cfg: SynthConfig) -> tuple[dict, dict, list[str]]:
    """Per intent: (templates for train/pool, templates for dev/test); intents that must share."""
    seen, unseen, shared = {}, {}, []
    for intent in intents:
        ids = sorted(grammar.template_ids(intent))
        ids = [ids[i] for i in _rng(cfg.seed, "holdout", intent).permutation(len(ids))]
        n = len(ids)
        if n == 1:
            shared.append(intent)
            seen[intent], unseen[intent] = ids, ids
            continue
        hold = min(max(1, round(n * cfg.holdout_fraction)), max(1, n - cfg.min_seen_templates))
        unseen[intent], seen[intent] = sorted(ids[:hold]), sorted(ids[hold:])
    return seen, unseen, shared


def split_field_templates(unseen: dict[str, list[str]], shared: list[str], cfg: SynthConfig
                          ) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Per intent, the held-out templates as (field, novel). Field phrasings are how the users speak
    that train lacks: the unlabelled pool says them (other sentences), dev/test too. Novel phrasings
    are in no training text and no pool clip: the test of generalisation proper."""
    field_t, novel_t = {}, {}
    for intent, ids in unseen.items():
        if intent in shared:
            field_t[intent], novel_t[intent] = [], []
            continue
        order = [ids[i] for i in _rng(cfg.seed, "field", intent).permutation(len(ids))]
        n = round(len(ids) * cfg.field_fraction)
        field_t[intent], novel_t[intent] = sorted(order[:n]), sorted(order[n:])
    return field_t, novel_t


def template_parts(seen: dict[str, list[str]], field_t: dict[str, list[str]], novel_t: dict[str, list[str]],
                   shared: list[str]) -> dict[str, str]:
    """template id -> seen / field / novel (a single template that all splits share counts as seen)."""
    parts = {t: "novel" for ts in novel_t.values() for t in ts}
    parts.update({t: "field" for ts in field_t.values() for t in ts})
    parts.update({t: "seen" for ts in seen.values() for t in ts})   # after: shared templates are seen
    return parts


def _field_pool(grammar: Any, schema: Any, sentences: dict[str, list[Any]], field_t: dict[str, list[str]],
                cfg: SynthConfig) -> list[Any]:
    """The pool as field audio: ``pool_field_share`` of it says field phrasings (sentences that no dev or
    test clip says), the rest a seeded subset of the train-phrasing sentences drawn for it."""
    size = cfg.pool_size
    n_field = round(size * cfg.pool_field_share)
    field_t = {i: ts for i, ts in field_t.items() if ts}
    if not field_t or n_field == 0:
        return sentences["pool"]
    held = {s.text for split in ("dev", "test") for s in sentences[split]}
    # Another seed than dev/test's draw, twice the need, then drop what dev/test say: the pool shares
    # phrasings with the field, never a sentence (or a clip, or a speaker) of dev/test.
    drawn = _split_sentences(grammar, schema, field_t, {"pool": 2 * n_field},
                             dataclasses.replace(cfg, seed=cfg.seed + 7919))["pool"]
    fresh = [s for s in drawn if s.text not in held]
    rng = _rng(cfg.seed, "field-pool")
    fresh = [fresh[i] for i in sorted(rng.permutation(len(fresh))[:n_field])]
    seen_part = sentences["pool"]
    seen_part = [seen_part[i] for i in sorted(rng.permutation(len(seen_part))[: size - len(fresh)])]
    return seen_part + fresh


def _template_weight(grammar: Any, template_id: str) -> float:
    """Templates with more distinct sentences get more clips (sqrt, capped), tiny ones fewer."""
    size = getattr(grammar, "template_size", None)
    return math.sqrt(min(size(template_id), 64)) if size else 1.0


def _split_sentences(grammar: Any, schema: Any, templates: dict[str, list[str]], sizes: dict[str, int],
                     cfg: SynthConfig) -> dict[str, list[Any]]:
    """Sentences for splits that share templates; each intent gets an equal share of each split.

    Sentences are drawn once per template for all the splits and dealt out in turn, so the
    splits get different sentences while the template has enough of them.
    """
    intents = sorted(templates)
    quotas: dict[str, dict[str, int]] = {}
    for split, size in sizes.items():
        order = [intents[i] for i in _rng(cfg.seed, "intent-order", split).permutation(len(intents))]
        quotas[split] = dict(zip(order, _allocate(size, [1.0] * len(order))))
    out: dict[str, list[Any]] = {s: [] for s in sizes}
    for intent in intents:
        ids = templates[intent]
        per_template = {s: _allocate(quotas[s][intent], [_template_weight(grammar, t) for t in ids]) for s in sizes}
        for j, template_id in enumerate(ids):
            need = {s: per_template[s][j] for s in sizes}
            if not sum(need.values()):
                continue
            sentences = grammar.expand(schema, [template_id], per_template=sum(need.values()), seed=cfg.seed)
            if not sentences:
                raise ConfigError(f"grammar template {template_id!r} yields no sentence; fix it in the grammar")
            turn = 0
            for split, count in need.items():
                for _ in range(count):
                    out[split].append(sentences[turn % len(sentences)])
                    turn += 1
    return out


def _voice_weights(voices: list[tts.Voice], recorded_share: float, kokoro_share: float = 0.0) -> list[float]:
    """Clip weight per voice: Kokoro speakers share ``kokoro_share`` of the split, recorded persons
    ``recorded_share`` of the rest, espeak the remainder (families that are absent give theirs away);
    within a family every person gets the same share."""
    present = {voice_family(v) for v in voices}
    share = {"kokoro": kokoro_share if "kokoro" in present else 0.0}
    rest = 1.0 - share["kokoro"]
    share["recorded"] = rest * recorded_share if "recorded" in present else 0.0
    share["espeak"] = rest - share["recorded"] if "espeak" in present else 0.0
    total = sum(share.values())
    if total <= 0:          # e.g. kokoro_share 0 and only Kokoro voices here: share equally
        share = {f: 1.0 for f in present}
        total = float(len(present))
    people = {f: Counter(v.person for v in voices if voice_family(v) == f) for f in present}
    return [share[voice_family(v)] / total / len(people[voice_family(v)]) / people[voice_family(v)][v.person]
            for v in voices]


def _prosody(voice: tts.Voice, rng: np.random.Generator, cfg: SynthConfig) -> tts.Voice:
    """Per-clip engine settings: espeak rate/pitch/range, Piper noise; TTS seeds come from the clip."""
    if voice.engine == "espeak":
        return voice.with_params(rate=int(rng.uniform(*cfg.espeak_rate_range)),
                                 pitch=int(rng.uniform(*cfg.espeak_pitch_range)), range=int(rng.uniform(30, 70)))
    if voice.engine == "piper":
        return voice.with_params(noise_scale=round(float(rng.uniform(0.5, 0.8)), 3),
                                 length_scale=round(float(rng.uniform(0.85, 1.2)), 3),
                                 noise_w=round(float(rng.uniform(0.6, 0.95)), 3))
    if voice.engine == "kokoro":       # the speaker's own rate, +-6 % per clip (clipped to 0.85-1.15)
        return voice.with_params(speed_jitter=round(float(rng.uniform(0.94, 1.06)), 3))
    return voice


def _item_key(item: PlanItem, cfg: SynthConfig) -> str:
    """Everything a clip depends on; a clip on disk with another key is made again."""
    spec = {"v": SYNTH_VERSION, "text": item.text, "voice": item.voice.id, "params": item.voice.params,
            "seed": item.seed, "augment": dataclasses.asdict(cfg.augment_config()), "max_seconds": cfg.max_seconds}
    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Plan:
    items: list[PlanItem]
    voices: dict[str, list[tts.Voice]]
    seen_templates: dict[str, list[str]]
    unseen_templates: dict[str, list[str]]
    shared_template_intents: list[str]
    babble: dict[str, list[tuple[tts.Voice, str]]]
    field_templates: dict[str, list[str]] = field(default_factory=dict)
    novel_templates: dict[str, list[str]] = field(default_factory=dict)


def make_plan(cfg: SynthConfig) -> Plan:
    """Which sentence each clip says, with which voice, in which split (deterministic)."""
    from ..schema import load_schema
    from .grammar import load_grammar

    schema = load_schema(cfg.schema)
    grammar = load_grammar(cfg.grammar)
    intents = _intents(cfg, schema, grammar)
    too_small = {s: n for s, n in cfg.sizes().items() if n < len(intents)}
    if too_small:
        raise ConfigError(f"sizes {too_small} are below the {len(intents)} intents, and every intent must be "
                          "in every split; raise them or list fewer intents")
    voices = assign_voices(select_voices(cfg), cfg)
    seen, unseen, shared = hold_out_templates(grammar, intents, cfg)
    if shared:
        log.warning("intents with a single template share it between train/pool and dev/test: %s; "
                    "add templates to the grammar", shared)
    field_t, novel_t = split_field_templates(unseen, shared, cfg)
    parts = template_parts(seen, field_t, novel_t, shared)
    sizes = cfg.sizes()
    # train is drawn with the pool's original share, so the field pool leaves train's sentences as they were
    sentences = _split_sentences(grammar, schema, seen, {s: sizes[s] for s in ("train", "pool")}, cfg)
    sentences.update(_split_sentences(grammar, schema, unseen, {s: sizes[s] for s in ("dev", "test")}, cfg))
    sentences["pool"] = _field_pool(grammar, schema, sentences, field_t, cfg)

    items: list[PlanItem] = []
    babble: dict[str, list[tuple[tts.Voice, str]]] = {}
    for split_index, split in enumerate(SPLITS):
        rng = _rng(cfg.seed, "plan", split)
        said = [sentences[split][i] for i in rng.permutation(len(sentences[split]))]
        counts = _allocate(len(said), _voice_weights(voices[split], cfg.recorded_share,
                                                     cfg.kokoro_share[split_index]))
        speakers = [v for v, c in zip(voices[split], counts) for _ in range(c)]
        speakers = [speakers[i] for i in rng.permutation(len(speakers))]
        for i, (sentence, voice) in enumerate(zip(said, speakers)):
            seed = int(np.random.SeedSequence([cfg.seed, split_index, i]).generate_state(1)[0])
            item = PlanItem(f"{split}-{i:05d}", split, sentence.text, sentence.intent, dict(sentence.slots),
                            sentence.template_id, _prosody(voice, rng, cfg), seed,
                            part=parts.get(sentence.template_id, "seen"))
            item.key = _item_key(item, cfg)
            items.append(item)
        babble[split] = _babble_specs(voices[split], said, cfg.babble_clips, rng)
    return Plan(items, voices, seen, unseen, shared, babble, field_t, novel_t)


def _intents(cfg: SynthConfig, schema: Any, grammar: Any) -> list[str]:
    if cfg.intents:
        bad = [i for i in cfg.intents if i not in schema.intents or not grammar.template_ids(i)]
        if bad:
            raise ConfigError(f"intents {bad} are not in the schema or have no grammar template")
        return list(cfg.intents)
    without = [i for i in schema.intents if not grammar.template_ids(i)]
    if without:
        log.warning("intents without grammar templates are left out: %s", without)
    return [i for i in schema.intents if grammar.template_ids(i)]


def _babble_specs(voices: list[tts.Voice], sentences: list[Any], n: int, rng: np.random.Generator
                  ) -> list[tuple[tts.Voice, str]]:
    """Background talkers for a split: its own (cheap espeak) voices saying its own sentences."""
    talkers = [v for v in voices if v.engine == "espeak"] or voices
    picks = rng.permutation(len(talkers))
    return [(talkers[picks[k % len(talkers)]], sentences[-1 - k].text) for k in range(min(n, len(sentences)))]


# ============================================================================ rendering (workers)

_WORKER: dict[str, Any] = {}


def _init_worker(aug: AugmentConfig, max_seconds: float, out_dir: str, babble: dict) -> None:
    logging.basicConfig(level=logging.WARNING)
    _WORKER.update(aug=aug, max_seconds=max_seconds, out_dir=Path(out_dir), babble_specs=babble, banks={})


def _babble_bank(split: str) -> list[np.ndarray]:
    banks = _WORKER["banks"]
    if split not in banks:
        bank = []
        for voice, text in _WORKER["babble_specs"].get(split, []):
            try:
                wave, sr = tts.synthesize(voice, text)
                bank.append(resample(wave, sr, SAMPLE_RATE))
            except tts.TTSError as e:
                log.warning("babble clip skipped: %s", e)
        banks[split] = bank
    return banks[split]


def _write_flac(path: Path, wave: np.ndarray, comment: str) -> None:
    """tmp + rename: a clip on disk is always complete."""
    tmp = path.with_name(path.name + ".tmp")
    with sf.SoundFile(str(tmp), "w", samplerate=SAMPLE_RATE, channels=1, format="FLAC", subtype="PCM_16") as f:
        f.comment = comment
        f.write(wave)
    os.replace(tmp, path)


def render(item: PlanItem) -> dict[str, Any]:
    """Synthesise, augment and write one clip -> a result record (status ok / too_long / error)."""
    try:
        rng = np.random.default_rng(item.seed)
        wave, sr = tts.synthesize(item.voice.with_params(seed=item.seed), item.text)
        clip, params = augment(wave, sr, rng, _WORKER["aug"], _babble_bank(item.split), _WORKER["max_seconds"])
        path = item.path(_WORKER["out_dir"])
        meta = {"key": item.key, "augment": params, "voice": item.voice.id, "text": item.text}
        _write_flac(path, clip, json.dumps(meta))
        return {"id": item.id, "status": "ok", "duration": len(clip) / SAMPLE_RATE, "augment": params}
    except ClipTooLong as e:
        return {"id": item.id, "status": "too_long", "reason": str(e)}
    except tts.TTSError as e:
        return {"id": item.id, "status": "error", "reason": str(e)}
    except Exception as e:          # noqa: BLE001 -- one bad clip must not stop the corpus
        log.exception("clip %s failed", item.id)
        return {"id": item.id, "status": "error", "reason": f"{type(e).__name__}: {e}"}


def existing_record(item: PlanItem, out_dir: Path) -> dict[str, Any] | None:
    """The record of a clip already on disk for this exact plan entry (None: make it)."""
    path = item.path(out_dir)
    if not path.is_file():
        return None
    try:
        with sf.SoundFile(str(path)) as f:
            meta = json.loads(f.comment or "{}")
            frames, sr = f.frames, f.samplerate
    except (RuntimeError, ValueError, sf.LibsndfileError):
        return None
    if meta.get("key") != item.key or sr != SAMPLE_RATE or frames == 0:
        return None
    return {"id": item.id, "status": "ok", "duration": frames / sr, "augment": meta.get("augment", {})}


def _run(todo: list[PlanItem], plan: Plan, cfg: SynthConfig, out_dir: Path) -> Iterable[dict[str, Any]]:
    init = (cfg.augment_config(), cfg.max_seconds, str(out_dir), plan.babble)
    if cfg.workers == 1 or len(todo) < 2 * cfg.workers:
        _init_worker(*init)
        yield from map(render, todo)
        return
    # spawn: workers start clean (no inherited threads / torch state) and set up their own engines
    context = multiprocessing.get_context("spawn")
    with context.Pool(cfg.workers, initializer=_init_worker, initargs=init) as pool:
        yield from pool.imap_unordered(render, todo, chunksize=4)


# ============================================================================ the corpus


def run_synth(cfg: SynthConfig) -> dict[str, Any]:
    """Synthesise (or finish) the corpus of `cfg`; returns the summary that summary.json holds."""
    start = time.time()
    out_dir = cfg.output_dir()
    plan = make_plan(cfg)
    for split in SPLITS:
        (out_dir / split).mkdir(parents=True, exist_ok=True)
        for stale in (out_dir / split).glob("*.tmp"):
            stale.unlink()

    records: dict[str, dict[str, Any]] = {}
    todo = []
    for item in plan.items:
        record = existing_record(item, out_dir)
        if record:
            records[item.id] = record
        else:
            todo.append(item)
    reused = len(records)
    print(f"synth: {len(plan.items)} clips planned in {out_dir}, {reused} already there, {len(todo)} to make "
          f"with {cfg.workers} worker(s)", file=sys.stderr)

    failures = 0
    from tqdm import tqdm

    with tqdm(total=len(todo), desc="synth", unit="clip", disable=not cfg.progress or not todo) as bar:
        for record in _run(todo, plan, cfg, out_dir):
            records[record["id"]] = record
            if record["status"] != "ok":
                failures += 1
                if failures <= _MAX_LOGGED_FAILURES:
                    log.warning("skipped %s (%s): %s", record["id"], record["status"], record["reason"])
            bar.update()
    if failures > _MAX_LOGGED_FAILURES:
        log.warning("%d more clips skipped (see summary.json)", failures - _MAX_LOGGED_FAILURES)

    write_holdout(plan, cfg, out_dir)
    manifests = write_manifests(plan, records, out_dir)
    summary = summarize(plan, records, manifests, cfg, out_dir, made=len(todo), reused=reused,
                        wall_s=time.time() - start)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(format_summary(summary))
    return summary


HOLDOUT_FILE = "holdout.json"


def write_holdout(plan: Plan, cfg: SynthConfig, out_dir: Path) -> Path:
    """The corpus's own record of which phrasings only dev/test say: whatever trains on text (the NLU
    teacher) reads this file instead of recomputing the rule with other settings."""
    path = out_dir / HOLDOUT_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"seed": cfg.seed, "holdout_fraction": cfg.holdout_fraction,
                               "min_seen_templates": cfg.min_seen_templates,
                               "dev_test_templates": plan.unseen_templates,
                               # of those: field phrasings (the pool says them too) and novel ones (nobody)
                               "field_fraction": cfg.field_fraction, "pool_field_share": cfg.pool_field_share,
                               "field_templates": plan.field_templates, "novel_templates": plan.novel_templates,
                               "shared_template_intents": plan.shared_template_intents}, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def read_holdout(path: str | Path) -> tuple[dict[str, list[str]], list[str]]:
    """(intent -> dev/test-only template ids, intents whose single template all splits share)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        return {k: list(v) for k, v in data["dev_test_templates"].items()}, list(data["shared_template_intents"])
    except FileNotFoundError:
        raise ConfigError(f"{path} not found: the corpus predates hold-out files; rerun `assistant synth` with "
                          "the same settings (existing clips are reused)") from None
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(f"{path}: unreadable hold-out file ({e}); rerun `assistant synth`") from None


def write_manifests(plan: Plan, records: dict[str, dict], out_dir: Path) -> dict[str, list[Utterance]]:
    manifests: dict[str, list[Utterance]] = {s: [] for s in SPLITS}
    for item in plan.items:
        record = records.get(item.id)
        if not record or record["status"] != "ok":
            continue
        meta: dict[str, Any] = {"voice": item.voice.id, "engine": item.voice.engine, "template": item.template,
                                "part": item.part,
                                "condition": condition_of(record.get("augment", {})),
                                "augment": record.get("augment", {})}
        if item.split == "pool":
            meta["labels_hidden"] = True
        manifests[item.split].append(Utterance(
            audio=str(item.path(out_dir)), text=item.text, intent=item.intent, slots=item.slots,
            speaker=item.voice.person, id=item.id, duration=round(record["duration"], 3), meta=meta))
    for split, utterances in manifests.items():
        write_jsonl(utterances, out_dir / f"{split}.jsonl")
        # the same split for `datasets.load_dataset("audiofolder", data_dir=out_dir / split)`
        write_audiofolder_metadata(utterances, out_dir / split, labelled=split != "pool")
    return manifests


def summarize(plan: Plan, records: dict[str, dict], manifests: dict[str, list[Utterance]], cfg: SynthConfig,
              out_dir: Path, made: int, reused: int, wall_s: float) -> dict[str, Any]:
    persons = {s: sorted({v.person for v in plan.voices[s]}) for s in SPLITS}
    overlap = [(a, b) for i, a in enumerate(SPLITS) for b in SPLITS[i + 1:] if set(persons[a]) & set(persons[b])]
    if overlap:   # assign_voices guarantees this; a failure here is a bug, not a config problem
        raise RuntimeError(f"speakers shared between splits {overlap}")
    all_intents = sorted(plan.seen_templates)
    status = Counter(r["status"] for r in records.values())
    splits = {}
    for split in SPLITS:
        utts = manifests[split]
        seconds = sum(u.duration or 0.0 for u in utts)
        covered = sorted({u.intent for u in utts})
        splits[split] = {
            "utterances": len(utts), "hours": round(seconds / 3600, 4),
            "mean_seconds": round(seconds / max(1, len(utts)), 2),
            "voices": sorted(v.id for v in plan.voices[split]), "persons": persons[split],
            "engines": dict(Counter(u.meta["engine"] for u in utts)),
            "conditions": dict(Counter(u.meta["condition"] for u in utts)),
            "parts": dict(Counter(u.meta["part"] for u in utts)),
            "intents_covered": len(covered), "intents_missing": sorted(set(all_intents) - set(covered)),
            "templates": len({u.meta["template"] for u in utts}),
        }
    dropped = {k: v for k, v in status.items() if k != "ok"}
    return {
        "profile": cfg.profile, "out_dir": str(out_dir), "seed": cfg.seed, "wall_seconds": round(wall_s, 1),
        "clips_made": made, "clips_reused": reused, "planned": len(plan.items),
        "utterances": sum(s["utterances"] for s in splits.values()),
        "hours": round(sum(s["hours"] for s in splits.values()), 3),
        "dropped": dropped, "sped_up": sum(1 for r in records.values()
                                           if r["status"] == "ok" and r.get("augment", {}).get("sped_up")),
        "intents": len(all_intents), "splits": splits,
        "unseen_templates": sorted(t for ts in plan.unseen_templates.values() for t in ts),
        "shared_template_intents": plan.shared_template_intents,
        "failures": sorted((r["id"], r["status"], r["reason"]) for r in records.values() if r["status"] != "ok")[:200],
        "config": dataclasses.asdict(cfg),
    }


def format_summary(summary: dict[str, Any]) -> str:
    dropped = ", ".join(f"{n} {why}" for why, n in summary["dropped"].items()) or "none"
    lines = [f"synth {summary['profile']}: {summary['utterances']} utterances, {summary['hours']:.2f} h, "
             f"{summary['intents']} intents; made {summary['clips_made']}, reused {summary['clips_reused']}, "
             f"dropped {dropped}, sped up {summary['sped_up']}; {summary['wall_seconds']:.1f} s -> "
             f"{summary['out_dir']}"]
    for split, s in summary["splits"].items():
        missing = f" (missing: {', '.join(s['intents_missing'])})" if s["intents_missing"] else ""
        lines.append(f"  {split:<5} {s['utterances']:>6} utts {s['hours']:.3f} h  {len(s['voices'])} voices / "
                     f"{len(s['persons'])} speakers  intents {s['intents_covered']}/{summary['intents']}{missing}  "
                     f"templates {s['templates']}  engines {s['engines']}")
        lines.append(f"        voices: {', '.join(s['voices'])}")
    return "\n".join(lines)


# ============================================================================ command line


def list_voices_text() -> str:
    voices = tts.list_voices()
    lines = []
    for engine in tts.ENGINES:
        mine = [v for v in voices if v.engine == engine]
        if not mine:
            continue
        lines.append(f"{engine}: {len(mine)} voices, {len({v.person for v in mine})} speakers")
        if engine == "espeak":     # every accent x variant; splits keep a variant's accents together
            lines.append("  accents: " + ", ".join(sorted({v.params["accent"] for v in mine})))
            lines.append("  variants: " + ", ".join(dict.fromkeys(v.params["variant"] for v in mine)))
        else:
            lines += [f"  {v.id}  (person {v.person})" for v in mine]
    for engine, why in tts.engine_problems().items():
        lines.append(f"{engine}: {why}")
    return "\n".join(lines)


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="assistant synth", description="Synthesise the spoken-intent corpus (train / pool / dev / test) "
        "with offline TTS voices. Precedence: dataclass defaults < --profile preset < --config YAML < flags.")
    parser.add_argument("--list-voices", action="store_true", help="print the voices this machine has and exit")
    add_dataclass_arguments(parser, SynthConfig)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.list_voices:
        print(list_voices_text())
        return 0
    summary = run_synth(parse_config(SynthConfig, args))
    return 0 if summary["utterances"] else 1


if __name__ == "__main__":
    sys.exit(cli())
