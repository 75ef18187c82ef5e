"""`assistant rsft`: rejection-sampling fine-tuning in rounds.

    assistant rsft --config recipes/configs/rsft_default.yaml

Each round, four separate steps over plain data, each persisted before the next one starts:

    generate (rsft.generate)  -> round_k/candidates.jsonl   N samples + greedy per pool utterance
    score    (rsft.rewards)   -> round_k/scored.jsonl       reward callables, combined by weights
    accept   (rsft.accept)    -> round_k/decisions.jsonl    statistical / best_of_n / threshold / distinct_correct
    fine-tune (train.fine_tune) on the kept set (+ the labelled set) -> round_k/train/best, selected on dev

A killed run resumes: finished rounds are skipped (round_k/done.json), generation continues from the
candidates on disk, and fine-tuning resumes from its last checkpoint. Accepted samples are a pure
function of the persisted candidates and the seed, so nothing is lost or duplicated.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from assistant import distributed as dist
from assistant import nlu
from assistant.config import ConfigError, parse_command, run_command, save_yaml, to_dict
from assistant.data.grammar import domain_vocab_texts
from assistant.data.manifest import ManifestError, read_manifest
from assistant.frames import format_frame, parse_frame
from assistant.model.slu import SLUModel
from assistant.paths import runs_dir
from assistant.rsft.accept import AcceptConfig, accept_all, acceptance_report
from assistant.rsft.diagnostics import round_diagnostics
from assistant.rsft.generate import GenerateConfig, candidates_on_disk, generate_candidates
from assistant.rsft.readings import Reader
from assistant.rsft.rewards import LearnedRewardModel, build_reward_fns, make_teacher_reward, reward_specs
from assistant.rsft.rewards import score as score_candidates
from assistant.rsft.types import write_records
from assistant.schema import load_schema
from assistant.train import (Example, TrainConfig, TrainDataError, dev_score, examples_from_utterances, fine_tune,
                             set_seed)


def round_recipe() -> TrainConfig:
    """The fine-tuning recipe of each round: the supervised recipe's class (`assistant train`), with the
    round's defaults. Every key can be set under ``finetune:`` in the YAML or as ``--finetune.<key>``."""
    return TrainConfig(epochs=2, lr=1e-4, warmup_steps=10, freeze_encoder_layers=2, spec_augment=False,
                       asr_weight=0.5, dev_limit=300)


def default_rewards() -> dict:
    return {"verifier": 1.0, "teacher": 0.1}


TRANSCRIPT_TARGETS = ("majority", "sampled")

# TrainConfig fields that RSFT sets itself for each round (from its own pool / labelled / dev / output).
ROUND_OWNED = ("train_manifest", "dev_manifest", "corpus", "corpus_format", "audio_root", "dataset", "train_split",
               "dev_split", "columns", "output_dir", "model", "tiny_random", "train_limit")


@dataclass
class RSFTConfig:
    """`assistant rsft`: data and rounds at the top, then one section per step of a round (generate,
    rewards, accept, finetune). Sections are YAML mappings and dotted flags (``--accept.beta 0.5``)."""
    init_model: str | None = field(default=None, metadata={"help": "supervised model folder to start from (required)"})
    ref_model: str | None = field(default=None, metadata={"help": "reference model for ref log-probs (None: init_model)"})
    pool_manifest: str | None = field(default=None, metadata={"help": "unlabelled audio (labels hidden; required)"})
    labelled_manifest: str | None = field(default=None, metadata={"help": "labelled set: mixed into fine-tuning, fits 'learned'"})
    dev_manifest: str | None = field(default=None, metadata={"help": "round selection (required)"})
    output_dir: str | None = None        # None: runs/rsft
    holdout_file: str | None = None      # the corpus's holdout.json (None: the one beside pool_manifest): the
                                         # text teacher never trains on its dev/test phrasings
    rounds: int = 2
    pool_limit: int | None = None        # the first N pool clips (None: all)
    labelled_limit: int | None = None    # the first N labelled clips (None: all)
    seed: int = 0
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    # score: reward name -> weight, or -> {weight: w, option: value, ...} (assistant.rsft.rewards.REWARDS:
    # label, verifier, acoustic, teacher, agreement, vote, target_likelihood, learned)
    rewards: dict[str, Any] = field(default_factory=default_rewards)
    accept: AcceptConfig = field(default_factory=AcceptConfig)
    # targets: the kept frame's intent and slots, with the transcript the most draws gave for that frame
    # ("majority"; the greedy one on ties) or the kept sample's own ("sampled")
    transcript_target: str = "majority"
    mix_labelled: bool = True            # the labelled set joins each round's kept set
    from_base: bool = False              # ReST-EM: each round fine-tunes the base, not the last round
    # fine-tune: the supervised recipe itself (epochs, lr, batch size, frozen layers, SpecAugment, ASR loss,
    # dev_limit for round selection, ...); the round sets its data, output folder and seed
    finetune: TrainConfig = field(default_factory=round_recipe)

    def validate(self) -> None:
        if self.rounds < 0:
            raise ValueError("rounds must be >= 0")
        for name in ("pool_limit", "labelled_limit"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, or None for all clips")
        self.generate.validate()
        self.accept.validate()
        reward_specs(self.rewards)
        if self.transcript_target not in TRANSCRIPT_TARGETS:
            raise ValueError(f"transcript_target must be one of {TRANSCRIPT_TARGETS}, got {self.transcript_target!r}")
        if self.generate.readings and self.accept.rule == "statistical":
            raise ValueError("readings are not draws from the policy, so the statistical rule never keeps one; "
                             "use accept.rule best_of_n or threshold with generate.readings, or leave readings empty")
        if self.accept.min_text_confidence > 0 and "teacher" not in self.rewards:
            raise ValueError("accept.min_text_confidence reads the teacher reward: add teacher: 0.0 to rewards")
        defaults = TrainConfig()
        owned = [k for k in ROUND_OWNED if getattr(self.finetune, k) != getattr(defaults, k)]
        if owned:
            raise ValueError(f"finetune: {owned} are set by RSFT for each round (pool_manifest / labelled_manifest "
                             "/ dev_manifest / output_dir / init_model / labelled_limit); leave them out of finetune:")


# ------------------------------------------------------------------------------------------------
# Small steps a user can replace one at a time
# ------------------------------------------------------------------------------------------------

TEXT_REWARDS = {"teacher", "agreement", "learned"}     # rewards that read the text model


def load_teacher(cfg: RSFTConfig, schema):
    """The text model, when a reward or the readings use it (None otherwise)."""
    if not (TEXT_REWARDS & set(cfg.rewards) or cfg.generate.readings):
        return None
    with dist.main_process_first():            # trained once, cached; the other processes load it
        return nlu.default_teacher(schema, holdout_file=holdout_path(cfg))


def build_rewards(cfg: RSFTConfig, schema, labelled, model, out_dir: Path, teacher=None):
    """Reward callables from the config's names/weights, with the resources they need (``teacher``: the
    text model already loaded, else loaded here when a reward needs it)."""
    resources = {"schema": schema}
    if TEXT_REWARDS & set(cfg.rewards):
        resources["teacher"] = teacher if teacher is not None else load_teacher(cfg, schema)
    if "learned" in cfg.rewards:
        resources["learned_model"] = fit_learned_reward(cfg, schema, labelled, model, resources.get("teacher"), out_dir)
    return build_reward_fns(cfg.rewards, **resources)


def holdout_path(cfg: RSFTConfig) -> Path | None:
    """The corpus's hold-out list: given, or the holdout.json its pool was written with (None: the default
    corpus's, see assistant.nlu.training.default_sentences)."""
    if cfg.holdout_file:
        return Path(cfg.holdout_file)
    beside = Path(cfg.pool_manifest).parent / "holdout.json" if cfg.pool_manifest else None
    return beside if beside is not None and beside.is_file() else None


def fit_learned_reward(cfg, schema, labelled, model, teacher, out_dir: Path):
    """(audio, candidate) -> P(correct), fitted on candidates sampled for the labelled set."""
    path = out_dir / "learned_reward.safetensors"
    teacher_fn = make_teacher_reward(teacher) if teacher is not None else None
    if dist.main_first(path.is_file()):
        return LearnedRewardModel.load(path, schema=schema, teacher=teacher_fn)
    params = replace(cfg.generate, readings=[])
    cands = generate_candidates(model, labelled, out_dir / "learned_candidates.jsonl", params,
                                seed=cfg.seed + 17, desc="learned reward: sample")
    rm = LearnedRewardModel(schema=schema, teacher=teacher_fn, seed=cfg.seed)
    stats = rm.fit(labelled, cands)            # the same fit on every process (seeded); the main one saves it
    if dist.is_main():
        rm.save(path)
        (out_dir / "learned_reward.json").write_text(json.dumps(stats, indent=2, default=float))
    return rm


def majority_transcript(candidates, chosen) -> str:
    """Among the candidates with the chosen one's intent and slots, the transcript the most draws gave
    (the greedy row breaks ties, then the earlier candidate): a sampled transcript becomes a target only
    when the sampler agrees on it, not because one draw happened to carry the kept frame."""
    key = chosen.frame_key(transcript=False)
    votes: dict[str, list] = {}
    for c in candidates:
        if c.frame is not None and c.frame_key(transcript=False) == key:
            v = votes.setdefault(c.frame.transcript, [0, False, -c.index])
            v[0] += max(0, c.count)
            v[1] = v[1] or c.greedy
            v[2] = max(v[2], -c.index)
    return max(votes.items(), key=lambda kv: tuple(kv[1]))[0] if votes else chosen.frame.transcript


def kept_examples(utterances, scored_lists, decisions, transcript_target: str = "majority"):
    """Accepted candidates -> training examples: the kept frame, with the transcript ``transcript_target``
    names, at the decision's loss weight and scope."""
    by_id = {u.id: u for u in utterances}
    out = []
    for scored, decs in zip(scored_lists, decisions):
        cands = [s.candidate for s in scored]
        for s, d in zip(scored, decs):
            frame = s.candidate.frame
            if d.accepted and frame is not None:
                if transcript_target == "majority":
                    frame = replace(frame, transcript=majority_transcript(cands, s.candidate))
                u = by_id[s.candidate.utt_id]
                out.append(Example(audio=u.audio, target=format_frame(frame), id=f"{u.id}#{s.candidate.index}",
                                   weight=d.weight, scope=d.scope))
    return out


def kept_frames(round_dir: str | Path) -> list:
    """The frames (with their target transcripts) a finished round kept for pool clips, full examples only
    (not the intent-only or down-weighted ones an abstention variant keeps): label-free field text."""
    path = Path(round_dir) / "kept.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no kept set; finish the round first (`assistant rsft` / `assistant run`)")
    frames = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        frame = parse_frame(row["target"]).frame
        if frame is not None and frame.transcript and row.get("scope", "frame") == "frame" and row.get("weight", 1.0) >= 1.0:
            frames.append(frame)
    return frames


def label_is_right(u, target: str) -> bool:
    """Oracle only: whether a training target's frame has the utterance's hidden intent and slots."""
    f = parse_frame(target).frame
    return bool(u is not None and u.intent and f is not None and f.intent == u.intent and dict(f.slots) == dict(u.slots))


def pseudo_label_quality(utterances, examples) -> dict:
    """Oracle diagnostics only (never fed back): how often the kept frames match the hidden gold."""
    by_id = {u.id: u for u in utterances}
    per_part: dict[str, list[int]] = {}          # part -> [kept, correct]: the field phrasings are the point
    ok = n = 0
    for ex in examples:
        u = by_id.get(ex.id.split("#")[0])
        if u is None:
            continue
        right = label_is_right(u, ex.target)
        n += 1
        ok += right
        cell = per_part.setdefault(str(u.meta.get("part", "unknown")), [0, 0])
        cell[0] += 1
        cell[1] += right
    pool_parts = Counter(str(u.meta.get("part", "unknown")) for u in utterances)
    kept_ids = {e.id.split('#')[0] for e in examples}
    return {"kept_frame_precision": ok / n if n else None, "kept": n,
            "pool_coverage": len(kept_ids) / max(len(utterances), 1),
            "per_part": {p: {"pool": pool_parts[p], "kept": per_part.get(p, [0, 0])[0],
                             "coverage": sum(by_id[i].meta.get("part", "unknown") == p for i in kept_ids)
                             / max(pool_parts[p], 1),
                             "kept_frame_precision": per_part[p][1] / per_part[p][0] if p in per_part else None}
                         for p in sorted(pool_parts)}}


def kept_by_source(utterances, scored_lists, examples) -> dict:
    """Kept labels per candidate source (sample / text / stock reading) and, where the pool's hidden
    labels are known (oracle diagnostics only), how many are right."""
    source = {f"{s.utt_id}#{s.index}": s.candidate.source for ss in scored_lists for s in ss}
    by_id = {u.id: u for u in utterances}
    out: dict[str, dict] = {}
    for ex in examples:
        cell = out.setdefault(source.get(ex.id, "sample"), {"kept": 0, "correct": 0})
        cell["kept"] += 1
        cell["correct"] += label_is_right(by_id.get(ex.id.rsplit("#", 1)[0]), ex.target)
    return out


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------

def _speech_model(path) -> SLUModel:
    """A speech model of the loop, without the text pass; a checkpoint that is not an SLU folder (a model
    name, stock weights) gets the domain grammar's output vocabulary."""
    return SLUModel.from_pretrained(path, default_vocab=domain_vocab_texts)


def _load_split(path: str, limit: int | None):
    utts = read_manifest(path)
    return utts if limit is None else utts[:limit]


def run_round(cfg: RSFTConfig, k: int, model_dir: Path, ref_model, pool, labelled, dev, schema, rewards, out: Path,
              base_dir: Path, reader=None) -> dict:
    """Round ``k`` from the model saved in ``model_dir``: generate -> score -> accept -> fine-tune."""
    rdir = out / f"round_{k}"
    rdir.mkdir(parents=True, exist_ok=True)
    model = _speech_model(model_dir).eval()
    reused = candidates_on_disk(rdir / "candidates.jsonl")
    t0 = time.perf_counter()
    candidates = generate_candidates(model, pool, rdir / "candidates.jsonl", cfg.generate, ref_model=ref_model,
                                     seed=cfg.seed * 100 + k, desc=f"round {k}: generate", reader=reader)
    t_gen = time.perf_counter() - t0
    pool_ok = [u for u, c in zip(pool, candidates) if c]
    candidates = [c for c in candidates if c]

    t0 = time.perf_counter()
    scored = score_shared(pool_ok, candidates, rewards, cfg.generate.batch_size)
    if dist.is_main():
        write_records([s for ss in scored for s in ss], rdir / "scored.jsonl")
    t_score = time.perf_counter() - t0

    # a pure function of the scores and the seed: every process decides the same, none needs to wait
    decisions = accept_all(scored, cfg.accept.rule, cfg.accept.rule_params(), seed=cfg.seed * 1000 + k,
                           min_vote=cfg.accept.min_vote, min_text=cfg.accept.min_text_confidence,
                           keep_fraction=cfg.accept.keep_fraction(k), abstain_weight=cfg.accept.abstain_weight,
                           abstain_scope=cfg.accept.abstain_scope)
    if dist.is_main():
        write_records([d for ds in decisions for d in ds], rdir / "decisions.jsonl")
    acc = acceptance_report(scored, decisions)

    examples = kept_examples(pool_ok, scored, decisions, cfg.transcript_target)
    quality = pseudo_label_quality(pool_ok, examples)
    quality["kept_by_source"] = kept_by_source(pool_ok, scored, examples)
    if all(u.intent for u in pool_ok):          # reward quality and diversity, oracle only
        quality.update(round_diagnostics([s for ss in scored for s in ss], [d for ds in decisions for d in ds],
                                         {u.id: (u.intent, dict(u.slots)) for u in pool_ok},
                                         {u.id: str(u.meta.get("part", "unknown")) for u in pool_ok}))
    train_examples = examples + (examples_from_utterances(labelled) if cfg.mix_labelled else [])
    if dist.is_main():
        (rdir / "kept.jsonl").write_text("".join(json.dumps(asdict(e)) + "\n" for e in examples))

    start = _speech_model(base_dir if cfg.from_base else model_dir)
    tcfg = replace(cfg.finetune, seed=cfg.seed + k, context_seconds=start.context_seconds,
                   output_dir=str(rdir / "train"))
    result = fine_tune(start, train_examples, dev, tcfg, rdir / "train", desc=f"round {k}: fine-tune", schema=schema)
    n_cand = sum(len(c) for c in candidates)
    report = {
        "round": k, "model_dir": result["best_dir"], "dev": result["best_dev"],
        "candidates": n_cand, "utterances": len(pool_ok),
        "acceptance": acc,
        "oracle_diagnostics": quality, "train_examples": len(train_examples),
        "reward_values": [s.reward for ss in scored for s in ss],
        "kept_reward_values": [s.reward for ss, ds in zip(scored, decisions) for s, d in zip(ss, ds) if d.accepted],
        "seconds": {"generate": round(t_gen, 1), "score": round(t_score, 1), "fine_tune": result["seconds"]},
        # over this run's draws only: candidates a resumed run found on disk took no time here
        "candidates_reused": reused,
        "candidates_per_second": round((n_cand - reused) / max(t_gen, 1e-9), 1) if n_cand > reused else None,
    }
    if dist.is_main():
        (rdir / "report.json").write_text(json.dumps(report, indent=1, default=float))
        (rdir / "done.json").write_text(json.dumps({"model_dir": result["best_dir"]}))
    dist.barrier()
    return report


def score_shared(utterances, candidates, rewards, batch_size: int):
    """Every reward on every utterance's candidates; under ``accelerate launch`` each process scores its
    share (the generation batches it would take) and all get every row back, in order."""
    rows: dict[int, list] = {}
    for start in dist.batch_starts(len(utterances), batch_size):
        part = score_candidates(utterances[start:start + batch_size], candidates[start:start + batch_size],
                                rewards.fns, rewards.weights)
        rows.update(enumerate(part, start))
    return dist.gather_rows(rows, len(utterances))


def plot_rounds(reports: list[dict], init_dev: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    xs = [0] + [r["round"] for r in reports]
    axes[0].plot(xs, [init_dev["intent_accuracy"]] + [r["dev"]["intent_accuracy"] for r in reports], "o-")
    axes[0].set(title="dev intent accuracy per round", xlabel="round", ylabel="accuracy")
    axes[1].bar([r["round"] for r in reports], [r["acceptance"]["acceptance_rate"] or 0 for r in reports])
    axes[1].set(title="acceptance rate", xlabel="round", ylabel="accepted / candidates")
    for r in reports:
        axes[2].hist(r["reward_values"], bins=30, alpha=0.4, label=f"round {r['round']} all")
        axes[2].hist(r["kept_reward_values"], bins=30, alpha=0.6, histtype="step", lw=2, label=f"round {r['round']} kept")
    axes[2].set(title="reward histogram", xlabel="reward", ylabel="candidates")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


_RESUMABLE_CHANGES = {"rounds", "output_dir"}
_PATH_SETTINGS = {"init_model", "ref_model", "pool_manifest", "labelled_manifest", "dev_manifest", "holdout_file"}


def _settings(cfg: dict) -> dict:
    """A config's settings as compared for resuming: paths by the file they name, not their spelling."""
    return {k: str(Path(v).resolve()) if k in _PATH_SETTINGS and isinstance(v, str) else v for k, v in cfg.items()}


def check_resumable(cfg: RSFTConfig, out: Path) -> None:
    """Finished rounds in ``out`` are resumed only under the settings they were made with (the number of
    rounds and the folder's own location aside: a copied run folder resumes; a path may be spelt relative or
    absolute): rounds made with another reward, rule or recipe would otherwise be reported as this one's."""
    saved = out / "config.yaml"
    if not saved.is_file() or not any(p.is_file() for p in out.glob("round_*/done.json")):
        return
    old = _settings(yaml.safe_load(saved.read_text()) or {})
    new = _settings(yaml.safe_load(yaml.safe_dump(to_dict(cfg), sort_keys=False)))
    changed = sorted(k for k in set(old) | set(new) if k not in _RESUMABLE_CHANGES and old.get(k) != new.get(k))
    if changed:
        raise ConfigError(f"{out} holds finished rounds made with other settings ({', '.join(changed)} differ from "
                          f"{saved}): use a new --output-dir (`assistant run`: a new --output-dir with --sft-from "
                          "this run) or delete its round_* folders to run them again")


def run_rsft(cfg: RSFTConfig) -> dict:
    """All rounds; returns {"best_dir", "rounds": [per-round reports], "init_dev"}."""
    if not cfg.init_model or not Path(cfg.init_model).is_dir():
        raise ConfigError(f"init_model {cfg.init_model!r} is not a model folder; train one first "
                          "(`assistant train`) and pass --init-model runs/.../best")
    for name in ("pool_manifest", "dev_manifest"):
        if not getattr(cfg, name):
            raise ConfigError(f"{name} is required (a manifest path)")
    out = Path(cfg.output_dir) if cfg.output_dir else runs_dir() / "rsft"
    out.mkdir(parents=True, exist_ok=True)
    check_resumable(cfg, out)
    if dist.is_main():
        save_yaml(cfg, out / "config.yaml")
    set_seed(cfg.seed)
    schema = load_schema()
    pool = _load_split(cfg.pool_manifest, cfg.pool_limit)
    dev = _load_split(cfg.dev_manifest, cfg.finetune.dev_limit)
    labelled = _load_split(cfg.labelled_manifest, cfg.labelled_limit) if cfg.labelled_manifest else []
    base_dir = Path(cfg.init_model)
    with dist.main_process_first():            # a model name converts into the cache once
        ref_model = _speech_model(cfg.ref_model or base_dir).eval()

    init_dev = _init_dev_score(out / "init_dev.json", base_dir, dev, schema)
    reports, current = [], base_dir
    rewards = None
    teacher, reader = load_teacher(cfg, schema), None
    if cfg.generate.readings:
        reader = Reader(teacher, cfg.generate.readings)
    for k in range(1, cfg.rounds + 1):
        rdir = out / f"round_{k}"
        if dist.main_first((rdir / "done.json").is_file() and (rdir / "report.json").is_file()):
            report = json.loads((rdir / "report.json").read_text())
            print(f"round {k}: done already (dev intent acc {report['dev']['intent_accuracy']:.4f})")
        else:
            if rewards is None:
                rewards = build_rewards(cfg, schema, labelled, _speech_model(current).eval(),
                                        out, teacher)
            report = run_round(cfg, k, current, ref_model, pool, labelled, dev, schema, rewards, out, base_dir, reader)
            acc = report["acceptance"]
            print(f"round {k}: accepted {acc['n_accepted']}/{acc['n_candidates']} "
                  f"(rate {acc['acceptance_rate'] or 0:.3f}, {acc['n_utterances_kept_nothing']} utterances kept nothing), "
                  f"kept-frame precision (oracle) "
                  f"{report['oracle_diagnostics']['kept_frame_precision']}, dev intent acc "
                  f"{report['dev']['intent_accuracy']:.4f}")
        reports.append(report)
        current = Path(report["model_dir"])
    dist.barrier()
    best = max([(init_dev["intent_accuracy"], 0, str(base_dir))] +
               [(r["dev"]["intent_accuracy"], r["round"], r["model_dir"]) for r in reports])
    summary = {"best_dir": best[2], "best_round": best[1], "init_dev": init_dev,
               "rounds": [{kk: v for kk, v in r.items() if not kk.endswith("reward_values")} for r in reports]}
    if not dist.is_main():
        return summary
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    if reports:
        plot_rounds(reports, init_dev, out / "rounds.png")
    print(rounds_table(init_dev, reports))
    return summary


def _init_dev_score(path: Path, base_dir: Path, dev: list, schema) -> dict:
    """The starting model's dev score (round 0), computed once per run folder."""
    if dist.main_first(path.is_file()):
        return json.loads(path.read_text())
    report = dev_score(_speech_model(base_dir), dev, schema)
    report = {k: report[k] for k in ("intent_accuracy", "slot_f1", "slu_f1", "wer", "invalid_rate", "n")}
    if dist.is_main():
        path.write_text(json.dumps(report))
    return report


def rate_text(report: dict) -> str:
    """Candidates per second, or "reused" where every candidate came from a previous run's file."""
    rate = report.get("candidates_per_second")
    return "reused" if rate is None else f"{rate:.1f}"


def rounds_table(init_dev: dict, reports: list[dict]) -> str:
    lines = [f"{'round':>5} {'dev intent':>10} {'accept rate':>11} {'kept prec.':>10} {'cand/s':>7}",
             f"{0:>5} {init_dev['intent_accuracy']:>10.4f} {'-':>11} {'-':>10} {'-':>7}"]
    for r in reports:
        prec = r["oracle_diagnostics"]["kept_frame_precision"]
        lines.append(f"{r['round']:>5} {r['dev']['intent_accuracy']:>10.4f} "
                     f"{(r['acceptance']['acceptance_rate'] or 0):>11.3f} "
                     f"{(prec if prec is not None else float('nan')):>10.3f} {rate_text(r):>7}")
    return "\n".join(lines)


def cli(argv: list[str]) -> int:
    cfg = parse_command(RSFTConfig, "assistant rsft", __doc__, argv)
    return run_command("assistant rsft", lambda: run_rsft(cfg), (ManifestError, TrainDataError))
