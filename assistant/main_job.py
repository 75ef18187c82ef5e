"""`assistant run`: the main job on the embedded default, as a list of stages.

    corpus       synthesise the corpus (if missing; an existing one must have this run's profile and seed)
    sft          supervised fine-tuning on `train`
    rsft         RSFT rounds on the unlabelled field `pool` (the labelled `train` mixed in)
    field_teacher  the text model retrained with the pool's transcripts and the frames RSFT kept for them
                 (label-free field phrasings): a second text pass for the RSFT models, chosen on dev like the first;
                 off unless --field-teacher true (no gain measured)
    text_pass    the text NLU second pass: speech model, weight and stock bonus chosen on all of `dev` (the
                 configured pass unless dev's best beats it clearly: `text_pass_alpha`); the chosen pair is
                 copied to <out>/final
    evaluate     every speech model alone and with its text pass (the shipped pair among them) and the stock
                 peer on `test`
    real_speech  stock-prompt WER on real human clips, before / after fine-tuning

Each stage skips what it finds done (`done()`), so a re-run after a crash resumes; its result is a
small typed record in <out>/stages/<name>.json. Expensive pieces inside a stage are kept too (stock
transcripts, each model's text-pass choice, each system's test predictions), keyed by the model folder
they came from. `--stage S` starts at S (the stages before it must be done; S runs again) and
`--stop-stage S` stops after S.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from assistant import distributed as dist
from assistant.config import ConfigError, load_config, override, parse_command
from assistant.paths import REPO_ROOT, generated_dir, runs_dir
from assistant.rsft.loop import RSFTConfig
from assistant.train import TrainConfig

STAGES = ("corpus", "sft", "rsft", "field_teacher", "text_pass", "evaluate", "real_speech")
# MainConfig fields a stage reads beyond the results before it: changing one runs the stage again
STAGE_SETTINGS = {"field_teacher": ("nlu", "field_teacher"), "text_pass": ("nlu", "nlu_samples", "text_pass_alpha")}
CORPUS_FILES = ("train.jsonl", "pool.jsonl", "dev.jsonl", "test.jsonl", "holdout.json", "summary.json")


def peer_name(model: str) -> str:
    """The row of the peer a user would pick instead: the same Whisper, stock, + our text NLU."""
    from assistant.model.packaged import is_packaged_name

    return f"peer: stock Whisper {model if is_packaged_name(model) else Path(model).name} + our text NLU"


def _recipe(cls: type, name: str):
    """A section's default: the recipe file's values (recipes/configs/<name>), so the main job and
    `assistant train|rsft --config` read one recipe."""
    return load_config(cls, REPO_ROOT / "recipes" / "configs" / name)


def _sft_recipe() -> TrainConfig:
    return _recipe(TrainConfig, "sft_default.yaml")


def _rsft_recipe() -> RSFTConfig:
    # the readings recipe: +2.0 test points over supervised + text pass where rsft_default tied (one seed each)
    return _recipe(RSFTConfig, "rsft_readings.yaml")


@dataclass
class MainConfig:
    """`assistant run`. The supervised and RSFT recipes are sections (``sft:``, ``rsft:``), whose keys are
    dotted flags (``--rsft.rounds 2``, ``--sft.epochs 3``); a section also takes a whole recipe file
    (``--rsft recipes/configs/rsft_default.yaml``). The run fills in their data paths, output folders and
    seed; ``--rsft.rounds 0`` trains the supervised model only."""
    profile: str = field(default="default", metadata={"help": "synth profile of the corpus"})
    nlu: bool = True                          # give the final model the text NLU second pass (assistant.nlu)
    nlu_samples: int = field(default=8, metadata={
        "help": "the text pass may also read an n-best: this many frames sampled per clip, each with the text "
                "model's reading of its transcript; kept only if it wins on dev (0: greedy only)"})
    text_pass_alpha: float = field(default=0.05, metadata={
        "help": "a text-pass setting other than the configured one (weight 1, no stock reading, the n-best) ships "
                "only if it beats it on dev with sign-test p below this (1: dev's best always; "
                "python -m assistant.nlu.selection measures the rules on dev halves)"})
    field_teacher: bool = field(default=False, metadata={
        "help": "retrain the text model with the field pool's transcripts and the frames RSFT kept (label-free); "
                "an RSFT model + this text pass ships only if it wins on dev. Off: no gain measured (README)"})
    real_speech: bool = True                  # WER of the ASR path on real recordings, before/after
    output_dir: str | None = None             # None: runs/main
    sft_from: str | None = None               # another run's folder (e.g. runs/main): reuse its supervised model
                                              # instead of training one (RSFT with another seed on the same start)
    seed: int = 0
    corpus_seed: int | None = field(default=None, metadata={
        "help": "the corpus's seed (None: --seed); keep it at 0 to train other seeds on the same corpus"})
    stage: str | None = field(default=None, metadata={"help": f"start at this stage, one of {STAGES}: the ones "
                                                              "before it must be done, this one runs again"})
    stop_stage: str | None = field(default=None, metadata={"help": "stop after this stage"})
    sft: TrainConfig = field(default_factory=_sft_recipe)
    rsft: RSFTConfig = field(default_factory=_rsft_recipe)

    def validate(self) -> None:
        if not 0 <= self.text_pass_alpha <= 1:
            raise ValueError(f"text_pass_alpha must be in [0, 1] (1: dev's best setting always), got {self.text_pass_alpha}")
        if self.nlu_samples < 0:
            raise ValueError(f"nlu_samples must be >= 0 (0: the text pass reads the greedy frame only), got {self.nlu_samples}")
        for name in ("stage", "stop_stage"):
            if getattr(self, name) is not None and getattr(self, name) not in STAGES:
                raise ValueError(f"{name} {getattr(self, name)!r}: choose one of {STAGES}")
        if self.stage and self.stop_stage and STAGES.index(self.stop_stage) < STAGES.index(self.stage):
            raise ValueError(f"stop_stage {self.stop_stage!r} comes before stage {self.stage!r}")


# --------------------------------------------------------------------------- stage results


@dataclass
class SFTResult:
    best_dir: str
    dev: dict


@dataclass
class RSFTResult:
    best_dir: str
    rounds: list[dict]                        # each round's report (assistant.rsft.loop.run_round)


@dataclass
class TextPassChoice:
    """The text pass of one speech model, chosen on dev (``text_pass_on_dev``)."""
    name: str
    model_dir: str
    fingerprint: str
    dev_accuracy: float
    weight: float
    stock_bonus: float
    by_choice: dict[str, float]               # "w=.. b=.." (greedy only) / "w=.. b=.. n=N" (n-best) -> dev accuracy
    samples: int = 0                          # the n-best's draws per clip (0: greedy only)
    correct_by_choice: dict[str, str] = field(default_factory=dict)   # setting -> per dev clip "1" right / "0"
    configured_samples: int = 0               # the run's nlu_samples (the default setting's n-best)
    teacher_dir: str = ""                     # the text model: "" the default one, else the field teacher's folder

    @property
    def system(self) -> str:
        """The system's name in the tables: 'supervised + text pass', 'rsft round 1 + field text pass'."""
        return f"{self.name} + {'field ' if self.teacher_dir else ''}text pass"


@dataclass
class TextPassResult:
    speech_model: str
    model_dir: str
    weight: float
    stock_bonus: float
    dev_intent_accuracy_by_model: dict[str, float]
    dev_intent_accuracy_by_choice: dict[str, float]
    dev_stock_cascade_accuracy: float
    teacher_dev_gold_transcript_accuracy: float
    samples: int = 0                          # the shipped pass's n-best draws per clip (0: greedy only)
    teacher_dir: str = ""                     # the shipped text model: "" the default one, else the field teacher
    system: str = ""                          # its name in the test tables


@dataclass
class FieldTeacherResult:
    teacher_dir: str
    from_round: int                           # the RSFT round whose kept frames taught it
    field_sentences: int                      # pool transcripts (with their kept frames) added to the text
    dev_gold_transcript_accuracy: float       # the text model alone on the gold dev transcripts ...
    default_dev_gold_transcript_accuracy: float   # ... and the default one's, for comparison
    train_seconds: float | None = None


@dataclass
class EvaluateResult:
    test: dict[str, dict]                     # system -> evaluation report
    test_by_engine_condition: dict
    test_by_part: dict[str, dict]
    stock_wer: dict


def fingerprint(folder: str | Path) -> str:
    """Which model a cached result came from: the folder's files, sizes and modification times."""
    h = hashlib.sha256()
    for f in sorted(Path(folder).rglob("*")):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.relative_to(folder)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def test_predictions_file(run_dir: Path, system: str) -> Path:
    """Where a run keeps one system's test predictions (ids + predictions, in test order)."""
    return Path(run_dir) / "cache" / f"test_{_slug(system)}.json"


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _same_folder(a: str | Path, b: str | Path) -> bool:
    """One folder, however it was named (``--sft-from runs/main`` vs the absolute path a run wrote)."""
    return Path(a).resolve() == Path(b).resolve()


def _kept(path: Path) -> Any:
    """A kept piece of work, if the main process has it (every process then reads the same file)."""
    return _read_json(path) if dist.main_first(path.is_file()) else None


def _write_json(path: Path, value: Any) -> None:
    if dist.is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value, indent=2, default=float))


# --------------------------------------------------------------------------- the job


class MainJob:
    """The stages over one output folder; shared inputs (splits, the text model, stock transcripts) are
    built on first use."""

    def __init__(self, cfg: MainConfig):
        self.cfg = cfg
        self.out = Path(cfg.output_dir) if cfg.output_dir else runs_dir() / "main"
        self.corpus = generated_dir() / cfg.profile
        self.timings: dict[str, float] = {}

    # ----- shared inputs
    @cached_property
    def schema(self):
        from assistant.schema import load_schema

        return load_schema()

    @cached_property
    def dev(self):
        from assistant.data.manifest import read_manifest

        return read_manifest(self.corpus / "dev.jsonl")

    @cached_property
    def test(self):
        from assistant.data.manifest import read_manifest

        return read_manifest(self.corpus / "test.jsonl")

    @cached_property
    def teacher(self):
        from assistant import nlu                 # MiniLM: loaded when a stage needs it

        with dist.main_process_first():           # trained once, cached; the others load it
            return nlu.default_teacher(self.schema, holdout_file=self.corpus / "holdout.json")

    @cached_property
    def field_teacher_model(self):
        """The field teacher (stage ``field_teacher``), or None where the run has none."""
        from assistant.nlu import TextTeacher

        result = self.load_result("field_teacher", FieldTeacherResult)
        return TextTeacher.load(result.teacher_dir) if result is not None else None

    def teacher_of(self, teacher_dir: str) -> Any:
        """The text model a text pass reads transcripts with: the default one ("") or the field teacher."""
        return self.field_teacher_model if teacher_dir else self.teacher

    @cached_property
    def stock_model(self):
        """Stock Whisper's transcripts do not depend on the fine-tuning: the supervised model's stock path
        (adapters off) decodes them once for every speech model's text pass and for the peer."""
        from assistant.model.slu import SLUModel

        return SLUModel.from_pretrained(self.sft.best_dir)

    def stock_transcripts(self, split: str) -> list[str]:
        from assistant.nlu import stock_transcripts

        utts = getattr(self, split)
        path = self.out / "cache" / f"{split}_stock_transcripts.json"
        key = {"ids": [u.id for u in utts], "model": fingerprint(self.sft.best_dir)}
        kept = _kept(path)
        if kept and {k: kept[k] for k in key} == key:
            return kept["transcripts"]
        heard = stock_transcripts(self.stock_model, utts, desc=f"{split}: stock transcripts")
        _write_json(path, {**key, "transcripts": heard})
        return heard

    @cached_property
    def dev_stock(self) -> list[str]:
        return self.stock_transcripts("dev")

    # ----- stage results
    def result_path(self, stage: str) -> Path:
        return self.out / "stages" / f"{stage}.json"

    def load_result(self, stage: str, cls):
        value = _read_json(self.result_path(stage))
        return cls(**value) if value is not None else None

    @property
    def sft(self) -> SFTResult:
        return self.load_result("sft", SFTResult)

    @property
    def rsft(self) -> RSFTResult | None:
        return self.load_result("rsft", RSFTResult)

    def speech_models(self) -> list[tuple[str, Path]]:
        """Every speech model this run trains; the text pass picks one, evaluation scores them all."""
        rounds = self.rsft.rounds if self.rsft else []
        return [("supervised", Path(self.sft.best_dir))] + \
            [(f"rsft round {r['round']}", Path(r["model_dir"])) for r in rounds if r.get("model_dir")]

    # ----- running
    def run(self) -> dict:
        cfg = self.cfg
        first = STAGES.index(cfg.stage) if cfg.stage else 0
        last = STAGES.index(cfg.stop_stage) if cfg.stop_stage else len(STAGES) - 1
        self.out.mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(STAGES):
            # done: the stage's own check, on the results of the stages before it as they are now (a
            # stage that ran again, e.g. RSFT with one more round, makes the later ones run again)
            done = dist.main_first(getattr(self, f"{name}_done")() and self._inputs_unchanged(name))
            if i < first:
                if not done:
                    raise ConfigError(f"--stage {cfg.stage}: stage {name!r} before it is not done in {self.out}; "
                                      f"run from --stage {name} (or without --stage)")
                continue
            if i > last:
                break
            print(f"\n=== {name} ===", flush=True)
            if done and not (cfg.stage is not None and i == first):
                print(f"{name}: done already ({self.result_path(name)})")
                continue
            t = time.perf_counter()
            key = self._inputs_key(name)
            result = getattr(self, f"{name}_run")()
            _write_json(self.result_path(name), asdict(result) if hasattr(result, "__dataclass_fields__") else result)
            if dist.is_main():
                self._inputs_path(name).write_text(key)
            self.timings[f"{name}_s"] = round(time.perf_counter() - t, 1)
            dist.barrier()
        return self.summary()

    def _inputs_unchanged(self, stage: str) -> bool:
        """The corpus lives outside the run folder and checks itself (profile, seed)."""
        path = self._inputs_path(stage)
        return stage == "corpus" or (path.is_file() and path.read_text() == self._inputs_key(stage))

    def _inputs_path(self, stage: str) -> Path:
        return self.out / "stages" / f"{stage}.inputs"

    def _inputs_key(self, stage: str) -> str:
        """What a stage's result was computed from: the results of the stages before it and the run settings
        the stage reads itself (``STAGE_SETTINGS``)."""
        h = hashlib.sha256()
        for before in STAGES[:STAGES.index(stage)]:
            path = self.result_path(before)
            h.update(path.read_bytes() if path.is_file() else b"-")
        settings = STAGE_SETTINGS.get(stage, ())
        if settings:           # nothing hashed for a stage without settings: its key is what it always was
            h.update(repr([(name, getattr(self.cfg, name)) for name in settings]).encode())
        return h.hexdigest()[:16]

    # ----- 1. corpus
    def corpus_done(self) -> bool:
        if not all((self.corpus / f).is_file() for f in CORPUS_FILES):
            return False
        built = json.loads((self.corpus / "summary.json").read_text())
        want = {"profile": self.cfg.profile, "seed": self.corpus_seed}
        got = {k: built.get(k) for k in want}
        if got != want:
            raise ConfigError(f"{self.corpus} was built with {got}, this run asks for {want}: pass --corpus-seed "
                              f"{got['seed']} (train another seed on that corpus) or move it away to rebuild")
        return True

    @property
    def corpus_seed(self) -> int:
        return self.cfg.seed if self.cfg.corpus_seed is None else self.cfg.corpus_seed

    def corpus_run(self) -> dict:
        from assistant.data.synth import SynthConfig, run_synth

        if dist.is_main():
            run_synth(load_config(SynthConfig, None, profile=self.cfg.profile, seed=self.corpus_seed,
                                  out_dir=str(self.corpus)))
        dist.barrier()
        return {"corpus": str(self.corpus), "profile": self.cfg.profile, "seed": self.corpus_seed}

    # ----- 2. supervised
    def _sft_dir(self) -> Path:
        return Path(self.cfg.sft_from) / "sft" if self.cfg.sft_from else self.out / "sft"

    def sft_done(self) -> bool:
        return self.sft is not None and Path(self.sft.best_dir).is_dir()

    def sft_run(self) -> SFTResult:
        from assistant import train as sft

        sft_dir = self._sft_dir()
        if dist.main_first((sft_dir / "result.json").is_file() and (sft_dir / "best").is_dir()):
            print(f"supervised model exists ({sft_dir}): reusing it")
            result = json.loads((sft_dir / "result.json").read_text())
            return SFTResult(best_dir=str(sft_dir / "best"), dev=result.get("best_dev", {}))
        if self.cfg.sft_from:
            raise FileNotFoundError(f"--sft-from {self.cfg.sft_from}: no finished supervised model in {sft_dir} "
                                    "(result.json + best/); run `assistant run` there first or leave --sft-from out")
        tcfg = override(self.cfg.sft, train_manifest=str(self.corpus / "train.jsonl"),
                        dev_manifest=str(self.corpus / "dev.jsonl"), output_dir=str(sft_dir), seed=self.cfg.seed)
        result = sft.recipe_main(tcfg)
        return SFTResult(best_dir=result["best_dir"], dev=result["best_dev"])

    # ----- 3. RSFT
    def rsft_done(self) -> bool:
        return self.result_path("rsft").is_file() and len(self.rsft.rounds if self.rsft else []) == self.cfg.rsft.rounds

    def rsft_run(self) -> RSFTResult | None:
        from assistant.rsft.loop import run_rsft

        if self.cfg.rsft.rounds == 0:
            return None
        rcfg = override(self.cfg.rsft, init_model=self.sft.best_dir, pool_manifest=str(self.corpus / "pool.jsonl"),
                        dev_manifest=str(self.corpus / "dev.jsonl"), labelled_manifest=str(self.corpus / "train.jsonl"),
                        output_dir=str(self.out / "rsft"), holdout_file=str(self.corpus / "holdout.json"),
                        seed=self.cfg.seed)
        if self.cfg.nlu:                          # the agreement reward is the supervised model's text pass,
            # dev's best setting (alpha 1) whatever the shipping rule: every measured RSFT run was trained so
            sup = self.text_pass_choice("supervised", Path(self.sft.best_dir), alpha=1.0)
            rcfg = with_text_pass(rcfg, weight=sup.weight, stock_bonus=sup.stock_bonus)
        summary = run_rsft(rcfg)
        return RSFTResult(best_dir=summary["best_dir"], rounds=summary["rounds"])

    # ----- 4. the field teacher
    def field_teacher_done(self) -> bool:
        if not self.result_path("field_teacher").is_file():
            return False
        result = self.load_result("field_teacher", FieldTeacherResult)
        return result is None or Path(result.teacher_dir).is_dir()

    def field_teacher_run(self) -> FieldTeacherResult | None:
        """The text model retrained on its own text + the last RSFT round's kept pool frames with their
        transcripts: no label is read. Without the text pass or RSFT there is nothing to do."""
        from assistant.data.grammar import Sentence
        from assistant.nlu.training import field_teacher
        from assistant.rsft.loop import kept_frames

        self.__dict__.pop("field_teacher_model", None)
        if not (self.cfg.nlu and self.cfg.field_teacher and self.rsft and self.rsft.rounds):
            return None
        last = self.rsft.rounds[-1]["round"]
        frames = kept_frames(self.out / "rsft" / f"round_{last}")
        sentences = [Sentence(text=f.transcript, intent=f.intent, slots=dict(f.slots), template_id="field")
                     for f in frames if f.intent in self.schema.intents]
        if not sentences:
            print(f"field teacher: round {last} kept no pool transcript with a known intent; none trained")
            return None
        target = self.out / "field_teacher"
        started = time.perf_counter()
        with dist.main_process_first():
            teacher = field_teacher(target, sentences, self.schema, holdout_file=self.corpus / "holdout.json")
        result = FieldTeacherResult(teacher_dir=str(target), from_round=last, field_sentences=len(sentences),
                                    dev_gold_transcript_accuracy=self.gold_dev_accuracy(teacher),
                                    default_dev_gold_transcript_accuracy=self.gold_dev_accuracy(self.teacher),
                                    train_seconds=round(time.perf_counter() - started, 1))
        print(f"field teacher: {len(sentences)} pool transcripts from round {last}; on the gold dev transcripts "
              f"{result.dev_gold_transcript_accuracy:.4f} (the default text model {result.default_dev_gold_transcript_accuracy:.4f})")
        return result

    def gold_dev_accuracy(self, teacher) -> float:
        """A text model alone on the *gold* dev transcripts: the ceiling the speech side works under."""
        return sum(p[0] == u.intent for p, u in zip(teacher.predict([u.text for u in self.dev]), self.dev)) / len(self.dev)

    # ----- 5. text pass
    def text_pass_choice(self, name: str, model_dir: Path, alpha: float | None = None,
                         field_teacher: bool = False) -> TextPassChoice:
        """The text pass of one speech model (with the default text model, or with ``field_teacher``'s) chosen
        on every dev clip by the rule ``alpha`` (None: the run's ``text_pass_alpha``); the per-clip record it
        is chosen from is kept per model folder (another rule re-reads it)."""
        from assistant.nlu.selection import bits

        samples = self.cfg.nlu_samples
        teacher_dir = str(self.out / "field_teacher") if field_teacher else ""
        slug = _slug(name) + ("_field" if field_teacher else "")
        path = self.out / "cache" / f"text_pass_{slug}{f'_n{samples}_seed{self.cfg.seed}' if samples else ''}.json"
        mark = fingerprint(model_dir) + (f"|{fingerprint(teacher_dir)}" if field_teacher else "")
        kept = _kept(path)
        if not (kept and _same_folder(kept["model_dir"], model_dir) and kept["fingerprint"] == mark
                and kept.get("correct_by_choice")):
            correct = text_pass_on_dev(name, model_dir, self.dev, self.teacher_of(teacher_dir), self.dev_stock, samples,
                                       self.cfg.seed)
            kept = asdict(TextPassChoice(name=name, model_dir=str(model_dir), fingerprint=mark, dev_accuracy=0.0,
                                         weight=0.0, stock_bonus=0.0, by_choice={}, configured_samples=samples,
                                         correct_by_choice={k: bits(v) for k, v in correct.items()},
                                         teacher_dir=teacher_dir))
        choice = _apply_rule(TextPassChoice(**kept), self.cfg.text_pass_alpha if alpha is None else alpha)
        _write_json(path, asdict(choice))
        return choice

    def text_pass_choices(self) -> list[TextPassChoice]:
        """Every speech model with the default text model; the RSFT models also with the field teacher."""
        choices = [self.text_pass_choice(name, d) for name, d in self.speech_models()]
        if self.field_teacher_model is not None:
            choices += [self.text_pass_choice(name, d, field_teacher=True)
                        for name, d in self.speech_models() if name != "supervised"]
        return choices

    def text_pass_done(self) -> bool:
        return self.result_path("text_pass").is_file() and (self.out / "final").is_dir()

    def text_pass_run(self) -> TextPassResult | None:
        """The speech model + text pass that wins on dev ships (ties: the earlier model); without the text
        pass, RSFT's own choice on dev ships."""
        from assistant.evaluate import evaluation_report, stock_cascade_predictions

        if not self.cfg.nlu:
            self._ship(self._speech_choice())
            return None
        choices = self.text_pass_choices()
        best = max(choices, key=lambda c: c.dev_accuracy)                 # max keeps the first of equals
        cascade = evaluation_report(self.dev, stock_cascade_predictions(self.teacher, self.dev, self.dev_stock))
        result = TextPassResult(
            speech_model=best.name, model_dir=best.model_dir, weight=best.weight, stock_bonus=best.stock_bonus,
            samples=best.samples, teacher_dir=best.teacher_dir, system=best.system,
            dev_intent_accuracy_by_model={c.name if not c.teacher_dir else c.system: c.dev_accuracy for c in choices},
            dev_intent_accuracy_by_choice=best.by_choice, dev_stock_cascade_accuracy=cascade["intent_accuracy"],
            teacher_dev_gold_transcript_accuracy=self.gold_dev_accuracy(self.teacher))
        print(f"-> {best.system} (weight {best.weight:g}, stock bonus {best.stock_bonus:g}, n-best "
              f"{best.samples or 'off'}); stock Whisper "
              f"+ text NLU on dev: {result.dev_stock_cascade_accuracy:.4f}; the text model alone on the gold dev "
              f"transcripts: {result.teacher_dev_gold_transcript_accuracy:.4f}")
        self._ship(Path(best.model_dir), best)
        return result

    def _speech_choice(self) -> Path:
        """Without the text pass: RSFT's own choice on dev (or the supervised model)."""
        return Path(self.rsft.best_dir if self.rsft else self.sft.best_dir)

    def _ship(self, model_dir: Path, choice: TextPassChoice | None = None) -> None:
        """<out>/final: the chosen speech model (+ its text pass)."""
        final = self.out / "final"
        if dist.is_main():
            shutil.rmtree(final, ignore_errors=True)
            shutil.copytree(model_dir, final, ignore=shutil.ignore_patterns("optimizer.safetensors", "trainer_state.json"))
            if choice is not None:
                from assistant.nlu import attach

                attach(final, self.teacher_of(choice.teacher_dir), choice.weight, choice.stock_bonus, choice.samples, self.cfg.seed)
        dist.barrier()

    # ----- 6. evaluation on test
    def evaluate_done(self) -> bool:
        return self.result_path("evaluate").is_file()

    def systems(self) -> list[tuple[str, Path, Any]]:
        """(name, model folder, text pass: None / a TextPassChoice / "saved") of every system scored on test."""
        out = [(name, d, None) for name, d in self.speech_models()]
        shipped = self.load_result("text_pass", TextPassResult) if self.cfg.nlu else None
        if shipped is not None:
            # every speech model with its own text pass, not only the shipped one: RSFT's effect on what is
            # deployed is the RSFT pair against the supervised pair on the same test clips, whichever ships
            out += [(c.system, Path(c.model_dir), c) for c in self.text_pass_choices()
                    if (c.name, c.teacher_dir) != (shipped.speech_model, shipped.teacher_dir)]
            out.append((f"final = {shipped.system or shipped.speech_model + ' + text pass'}", self.out / "final", "saved"))
        return out

    def shipped_system(self, systems: list[tuple[str, Path, Any]]) -> str:
        """The deployed system's name: the saved pair with the text pass, else the speech model shipped
        alone (already among the speech models: not decoded twice)."""
        if self.cfg.nlu:
            return systems[-1][0]
        return next(name for name, d, _ in systems if d == self._speech_choice())

    def predictions(self, name: str, model_dir: Path, text_pass, stock: list[str]) -> list:
        """One system's test predictions, kept per model folder (and text-pass choice)."""
        from assistant.evaluate import evaluate_model
        from assistant.inference import Prediction
        from assistant.model.slu import SLUModel
        from assistant.nlu import NluPass, load_pipeline

        key = fingerprint(model_dir) + (f"|{text_pass.weight}|{text_pass.stock_bonus}|{text_pass.samples}|{self.cfg.seed}"
                                        + (f"|{fingerprint(text_pass.teacher_dir)}" if text_pass.teacher_dir else "")
                                        if isinstance(text_pass, TextPassChoice) else f"|{text_pass}")
        path = test_predictions_file(self.out, name)
        kept = _kept(path)
        if kept and kept["key"] == key and kept["ids"] == [u.id for u in self.test]:
            return [Prediction(**p) for p in kept["predictions"]]
        model = load_pipeline(model_dir) if text_pass == "saved" else SLUModel.from_pretrained(model_dir)
        if isinstance(text_pass, TextPassChoice):
            model.nlu = NluPass(self.teacher_of(text_pass.teacher_dir), text_pass.weight, text_pass.stock_bonus, text_pass.samples,
                                self.cfg.seed)
        _, preds = evaluate_model(model.eval(), self.test, self.schema, desc=f"test: {name}",
                                  use_nlu=text_pass is not None, stock=stock)
        _write_json(path, {"key": key, "ids": [u.id for u in self.test], "predictions": [p.to_dict() for p in preds]})
        return preds

    def evaluate_run(self) -> EvaluateResult:
        from assistant.evaluate import (by_engine_condition, evaluation_report, format_report, plot_confusion,
                                        stock_cascade_predictions, write_predictions)

        test_stock = self.stock_transcripts("test")
        stock_wer = stock_wer_by_speaker(self.test, test_stock, self.dev if self.cfg.nlu else [],
                                         self.dev_stock if self.cfg.nlu else [])
        scored = self.systems()
        systems = {name: self.predictions(name, d, tp, test_stock) for name, d, tp in scored}
        shipped_name = self.shipped_system(scored)
        shipped = systems[shipped_name]
        if dist.is_main():
            write_predictions(self.test, shipped, self.out / "test_predictions.jsonl")
            plot_confusion(self.test, shipped, self.out / "test_confusion.png")
        cells = {"shipped": shipped}
        if self.cfg.nlu:
            systems[peer_name(self.cfg.sft.model)] = cells["stock_cascade"] = stock_cascade_predictions(self.teacher, self.test, test_stock)
        reports = {name: evaluation_report(self.test, preds) for name, preds in systems.items()}
        by_cell = by_engine_condition(self.test, cells)
        self._print_results(reports, shipped_name, by_cell, stock_wer, format_report)
        return EvaluateResult(test=reports, test_by_engine_condition=by_cell, stock_wer=stock_wer,
                              # seen / field / novel phrasings (assistant.data.synth): where adaptation shows
                              test_by_part={n: {p: v["accuracy"] for p, v in r["per_part"].items()}
                                            for n, r in reports.items()})

    def _print_results(self, reports: dict, shipped: str, by_cell: dict, stock_wer: dict, format_report) -> None:
        if not dist.is_main():
            return
        width = max(len(name) for name in reports)
        print(f"\n{'model':<{width}} {'intent acc':>10} {'slot F1':>8} {'SLU-F1':>7} {'WER':>7} {'invalid':>8}")
        for name, r in reports.items():
            print(f"{name:<{width}} {r['intent_accuracy']:>10.4f} {r['slot_f1']:>8.4f} {r['slu_f1']:>7.4f} "
                  f"{r['wer']:>7.4f} {r['invalid_rate']:>8.4f}")
        print("\nfinal model:", self.out / "final", "\n" + format_report(reports[shipped]))
        print("\n" + format_cells(by_cell))
        print("stock Whisper WER per engine (dev + test): " + ", ".join(
            f"{e} {w:.3f}" for e, w in stock_wer["by_engine"].items()) + "; worst Kokoro speakers: " + ", ".join(
            f"{k} {w:.3f}" for k, w in sorted(stock_wer["kokoro_speakers"].items(), key=lambda kv: -kv[1])[:3]))

    # ----- 7. real human speech
    def real_speech_done(self) -> bool:
        return self.result_path("real_speech").is_file()

    def real_speech_run(self) -> dict | None:
        from assistant.realspeech import compare      # clips ship with the package: nothing to fetch

        if not self.cfg.real_speech:
            return None
        real = compare({"stock tiny.en": None, "fine-tuned": str(self.out / "final")})
        for name, r in real.items():
            print(f"{name:<14} stock-prompt ASR WER {r['wer']:.4f} on {r['n_clips']} clips"
                  + (f"; SLU-output transcript WER {r['slu_wer']:.4f} on the {r['slu_n_clips']} clips that "
                     "fit its context" if "slu_wer" in r else ""))
        return real

    # ----- the summary README's tables are made from
    def sft_model_name(self) -> str:
        """The pretrained model the supervised model started from (its saved config: --sft-from reuses another's)."""
        config = self._sft_dir() / "config.yaml"
        return load_config(TrainConfig, config).model if config.is_file() else self.cfg.sft.model

    def summary(self) -> dict:
        if not dist.is_main():
            return {}
        timings = _read_json(self.out / "stages" / "timings.json") or {}
        timings.update(self.timings)
        _write_json(self.out / "stages" / "timings.json", timings)
        print("time per stage (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
        evaluated = self.load_result("evaluate", EvaluateResult)
        text_pass = self.load_result("text_pass", TextPassResult) if self.cfg.nlu else None
        summary = {"final_model": str(self.out / "final"), "sft_model": self.sft_model_name(), **(asdict(evaluated) if evaluated else {}),
                   "timings_s": timings, "rsft_rounds": self.rsft.rounds if self.rsft else [],
                   "nlu": ({**asdict(text_pass), "stock_bonus": str(text_pass.stock_bonus)} if text_pass else None),
                   "field_teacher": _read_json(self.result_path("field_teacher")),
                   "real_speech": _read_json(self.result_path("real_speech"))}
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
        return summary


def run_main(cfg: MainConfig) -> dict:
    return MainJob(cfg).run()


def text_pass_on_dev(name: str, model_dir: Path, dev, teacher, dev_stock, samples: int = 0, seed: int = 0
                     ) -> dict[str, np.ndarray]:
    """Speech model + text pass on the ``dev`` utterances, whose stock transcripts are ``dev_stock`` (used when
    the model has a stock path): for every setting, "w=.. b=.." (weight, stock bonus; greedy frame only) and,
    with ``samples``, "w=.. b=.. n=N" (with an n-best of N draws, drawn with ``seed``), whether each clip's
    intent comes out right. In order of preference among equals: greedy before n-best (it costs a sampled
    decode per request), then the stock bonus nearest "never", then the smaller weight."""
    from assistant.model.slu import SLUModel      # torch and both models: only when it runs
    from assistant.nlu import STOCK_BONUSES, NluPass, dev_readings
    from assistant.nlu.second_pass import grid_correct

    model = SLUModel.from_pretrained(model_dir)
    readings = dev_readings(model, dev, NluPass(teacher, samples=samples, seed=seed), desc=f"nlu: dev readings, {name}",
                            stock=dev_stock if model.has_stock_path else None)
    bonuses = sorted(STOCK_BONUSES if model.has_stock_path else (-math.inf,))
    gold = [u.intent for u in dev]
    out = {}
    for n in ([0, samples] if samples else [0]):
        grid = grid_correct(readings, gold, stock_bonuses=bonuses, samples=n > 0)
        for (w, b) in sorted(grid, key=lambda wb: (bonuses.index(wb[1]), wb[0])):
            out[f"w={w:g} b={b:g}" + (f" n={n}" if n else "")] = grid[(w, b)]
    return out


def choose_text_pass(correct: dict[str, np.ndarray], samples: int, alpha: float = 1.0) -> tuple:
    """(dev accuracy, weight, stock bonus, n-best draws) of the setting ``assistant.nlu.selection.choose``
    ships from ``text_pass_on_dev``'s record: the configured pass (weight 1, no stock reading, ``samples``)
    unless dev's best beats it with sign-test p < ``alpha``."""
    from assistant.nlu.selection import choose, default_choice

    key = choose(correct, default_choice(samples), alpha)
    fields = dict(part.split("=") for part in key.split())
    return float(correct[key].mean()), float(fields["w"]), float(fields["b"]), int(fields.get("n", 0))


def _apply_rule(kept: TextPassChoice, alpha: float) -> TextPassChoice:
    from assistant.nlu.selection import default_choice, from_bits

    correct = {k: from_bits(v) for k, v in kept.correct_by_choice.items()}
    acc, w, b, n = choose_text_pass(correct, kept.configured_samples, alpha)
    by_choice = {k: float(v.mean()) for k, v in correct.items()}
    print(f"{kept.name}: dev intent accuracy {by_choice['w=0 b=-inf']:.4f} alone, {acc:.4f} with the "
          f"{'field ' if kept.teacher_dir else ''}text pass "
          f"(weight {w:g}, stock bonus {b:g}, n-best {n or 'off'}; dev's best {max(by_choice.values()):.4f}, "
          f"the configured pass {by_choice.get(default_choice(kept.configured_samples), float('nan')):.4f})")
    return replace(kept, dev_accuracy=acc, weight=w, stock_bonus=b, samples=n, by_choice=by_choice)


def with_text_pass(rcfg, weight: float, stock_bonus: float):
    """RSFT's agreement reward and readings follow the supervised model's text pass as chosen on dev:
    its weight and stock bonus; a pass that never uses the stock reading (bonus -inf) gets no stock
    readings either."""
    from assistant.rsft.rewards import with_reward_options

    if stock_bonus == -math.inf:
        return override(rcfg, rewards=with_reward_options(rcfg.rewards, "agreement", text_weight=weight),
                         generate={"readings": [r for r in rcfg.generate.readings if r != "stock"]})
    return override(rcfg, rewards=with_reward_options(rcfg.rewards, "agreement", text_weight=weight,
                                                      stock_bonus=min(stock_bonus, 1e3)))


def stock_wer_by_speaker(test, test_stock, dev, dev_stock) -> dict:
    """Stock Whisper's WER per engine, and per Kokoro speaker, on dev + test: the derived neural speakers
    must stay intelligible (a speaker stock Whisper cannot follow is a bad voice, not a hard test)."""
    from assistant.evaluate import engine_of
    from assistant.metrics import wer

    pairs = list(zip(test, test_stock)) + list(zip(dev, dev_stock))
    def score(rows):
        return wer([u.text for u, _ in rows], [h for _, h in rows])     # wer normalises both
    engines = sorted({engine_of(u) for u, _ in pairs})
    speakers = sorted({u.speaker for u, _ in pairs if engine_of(u) == "kokoro"})
    return {"by_engine": {e: score([p for p in pairs if engine_of(p[0]) == e]) for e in engines},
            "kokoro_speakers": {k: score([p for p in pairs if p[0].speaker == k]) for k in speakers}}


def format_cells(cells: dict) -> str:
    """The engine x condition table: intent accuracy of each system on the same test clips."""
    systems = sorted({k for conds in cells.values() for c in conds.values() for k in c if k != "n"},
                     key=lambda k: (k != "shipped", k))
    lines = [f"{'engine':<9} {'condition':<9} {'n':>4} " + " ".join(f"{s:>13}" for s in systems)]
    for engine, conds in cells.items():
        for condition, cell in conds.items():
            lines.append(f"{engine:<9} {condition:<9} {cell['n']:>4} " + " ".join(f"{cell[s]:>13.4f}" for s in systems))
    return "\n".join(lines)


def cli(argv: list[str]) -> int:
    cfg = parse_command(MainConfig, "assistant run", __doc__, argv)
    run_main(cfg)
    return 0
