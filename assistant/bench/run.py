"""`assistant bench`: speed, memory and accuracy side by side with the peers. A script that prints numbers.

    assistant bench --config recipes/configs/bench.yaml --model runs/main/final [--threads 1]
    assistant bench ... --reuse-peer runs/bench/old.json     # reuse the cascade's accuracy (saves ~30 min)
    assistant bench --quick                                  # tiny random model, few clips (smoke test)
    assistant bench --sampler [--json]                       # RSFT sampler vs transformers generate (minutes)
    assistant bench --serving [--json]                       # the demo server under 16 concurrent clients

A full run takes ~10 min on one core, plus ~30 min for the cascade's accuracy on 200 utterances (stock
Whisper pads to 30 s and sometimes loops to its 448-token limit) unless ``--reuse-peer`` names an earlier
bench.json scored on the same utterances with the same peer.

On the same clips (real test clips of ~1 s and ~3 s, ~8 s made by concatenating test clips):

* **ours**: ``assistant.inference.predict_waves`` (log-mel -> encoder -> greedy restricted-vocabulary
  decoding -> frame parse -> response) on the eager model, on the ONNX export and on its int8 version;
  latency p50/p95 and real-time factor (RTF = latency / audio duration) at batch 1 and batched;
  intent accuracy on a test subset; peak memory as the ru_maxrss delta of a fresh process per system.
* **cascade peer**: the stock transformers ASR pipeline on the converted Whisper tiny.en (30 s padding,
  default generation) followed by the MiniLM text intent classifier (``default_teacher().predict``).
* training throughput of ``assistant.train.fine_tune``; RSFT candidate generation throughput
  (``assistant.rsft.generate``, N=8 + greedy); reward scoring throughput (verifier + teacher).
* goals (>= 5x faster than the cascade at >= its accuracy; RTF <= 0.05 for a 3 s command; >= 200
  RSFT candidates/s), each met or missed, and a profile of where the time goes.

Latency is wall-clock, so it depends on what else runs on the machine: systems take turns clip by clip
(a load change hits all of them), the JSON records the load average before and after, and CPU time next
to wall time. Audio is decoded before timing starts for every system.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from assistant.bench.harness import (accuracy, latency_side_by_side, load_average, memory_probe, probe_main,
                                     round_significant, select_clips, timed)
from assistant.bench.profiling import profile_ours, profile_rsft
from assistant.bench.report import evaluate_goals, findings, format_table, int8_decision, parse_bench_config
from assistant.bench.systems import (CascadeSystem, OursSystem, cascade_key, reusable_cascade_accuracy,
                                     subset_fingerprint)
from assistant.bench.throughput import bench_classifier_peer, bench_rsft, bench_scoring, bench_training
from assistant.data.manifest import ManifestError, read_manifest
from assistant.paths import generated_dir, resolve_model_dir, runs_dir
from assistant.schema import load_schema

# torch, transformers, onnxruntime and the models are imported inside the functions that use them: the
# command sets its environment (threads, HF_HUB_OFFLINE, KINETO_LOG_LEVEL) first, and a memory probe
# imports them before its baseline.


@dataclass
class BenchConfig:
    model: str | None = field(default=None, metadata={"help": "model folder (None = the newest best model under runs/; "
                                                      "--quick: a tiny random model)"})
    json: str | None = field(default=None, metadata={"help": "JSON output (None = runs/bench/bench.json)"})
    quick: bool = field(default=False, metadata={"help": "tiny version: a tiny random model unless --model, few "
                                                         "clips, short runs"})
    test_manifest: str | None = field(default=None, metadata={"help": "clips + accuracy subset (None = the default "
                                                                       "corpus's test split)"})
    train_manifest: str | None = field(default=None, metadata={"help": "for the training benchmark (None = the "
                                                                        "default corpus)"})
    pool_manifest: str | None = field(default=None, metadata={"help": "for the RSFT benchmarks (None = the default "
                                                                       "corpus's pool)"})
    threads: int | None = None        # torch / onnxruntime threads (None = all cores)
    clips_per_length: int = 16        # distinct clips per length class (also the batch of the batched runs)
    batch_size: int = 16
    reps: int = 10                    # batch-1 calls per length class (after one warm-up call)
    batch_reps: int = 1               # batched calls per length class (each decodes `batch_size` clips)
    accuracy_utts: int = 200          # test utterances scored per system
    onnx: bool = True                 # export + bench the ONNX runtime (fp32 and int8)
    cascade: bool = True              # the ASR pipeline -> text classifier peer
    memory: bool = True               # peak-RSS probes (one fresh process per system)
    train_steps: int = 4              # fine_tune steps timed (difference of two runs: 1 and 1 + train_steps)
    rsft_utts: int = 32               # pool utterances for generation / scoring throughput
    profile: bool = True              # torch.profiler / phase breakdown of our pipeline and of RSFT generation
    classifier_steps: int = 94        # peer (2): HF Trainer steps of WhisperForAudioClassification (0 = skip)
    reuse_peer: str | None = field(default=None, metadata={"help": "an earlier bench.json: reuse its cascade *accuracy* "
                                                           "when the test subset and the peer are identical "
                                                           "(latency and memory are always measured)"})

    def validate(self) -> None:
        for name in ("clips_per_length", "batch_size", "reps", "batch_reps", "accuracy_utts", "train_steps", "rsft_utts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.classifier_steps < 0:
            raise ValueError(f"classifier_steps must be >= 0, got {self.classifier_steps}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, or null for all cores (got {self.threads})")


QUICK = dict(clips_per_length=2, batch_size=2, reps=1, batch_reps=1, accuracy_utts=2, train_steps=1, rsft_utts=2,
             classifier_steps=0)


def quick_config(cfg: BenchConfig) -> BenchConfig:
    """``cfg`` with every count capped at its --quick value."""
    return BenchConfig(**{**asdict(cfg), **{k: min(getattr(cfg, k), v) for k, v in QUICK.items()}})


_T0 = time.perf_counter()


def _say(msg: str) -> None:
    print(f"bench [{time.perf_counter() - _T0:6.0f} s]: {msg}", file=sys.stderr, flush=True)


@dataclass
class BenchRun:
    """What the steps of one run share: filled in step by step (model and data, clips, systems)."""
    cfg: BenchConfig
    threads: int
    schema: object
    work: Path                                  # a temporary folder, removed at the end
    model_dir: Path | None = None
    model: object = None                        # the pipeline as deployed (speech model + text pass)
    test: list = field(default_factory=list)
    train: list = field(default_factory=list)
    pool: list = field(default_factory=list)
    clips: dict = field(default_factory=dict)   # "1s" / "3s" / "8s" -> [Clip]
    acc_utts: list = field(default_factory=list)
    systems: dict = field(default_factory=dict)
    runtime: object = None                      # the fp32 ONNX runtime, when exported
    onnx_dir: Path | None = None
    teacher: object = None                      # the cached text teacher (None in --quick without one)


# ==================================================================================================
# The steps of a run: each reads the run and writes its sections of the results
# ==================================================================================================

def _manifest(path: str | None, split: str) -> list:
    return read_manifest(path or generated_dir() / "default" / f"{split}.jsonl")


def _teacher_if_available(schema, allow_training: bool):
    """The cached default text teacher; trains it (minutes) only when allowed (not in --quick)."""
    from assistant.nlu import default_teacher

    return default_teacher(schema, progress=False, train_if_missing=allow_training)


def _quick_model_dir(work: Path, utterance_lists) -> Path:
    from assistant.model.slu import SLUModel
    from assistant.train import frame_target

    texts = [frame_target(u) for utts in utterance_lists for u in utts]
    return SLUModel.tiny_random(texts, seed=0).save_pretrained(work / "tiny-model")


def _meta(cfg: BenchConfig, threads: int) -> dict:
    import torch

    return {"quick": cfg.quick, "threads": threads, "load_before": load_average(),
            "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "config": asdict(cfg), "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def load_model_and_data(run: BenchRun, results: dict) -> None:
    """The model (--model, else --quick's tiny random one) and the test / train / pool manifests."""
    from assistant.nlu import load_pipeline

    cfg = run.cfg
    model_dir, problem = resolve_model_dir(cfg.model)   # the one resolver every command uses
    if problem and (cfg.model or not cfg.quick):   # a wrong --model is named before any data is read
        raise FileNotFoundError(problem + ("" if cfg.model else " (or --quick)"))
    run.test = _manifest(cfg.test_manifest, "test")
    run.train = _manifest(cfg.train_manifest, "train")
    run.pool = _manifest(cfg.pool_manifest, "pool")
    if problem:
        model_dir = _quick_model_dir(run.work, [run.test, run.train, run.pool])
    _say(f"model {model_dir}")
    run.model_dir, run.model = model_dir, load_pipeline(model_dir)
    results["meta"].update({"model": str(model_dir), "context_seconds": run.model.context_seconds,
                            "batch_size": cfg.batch_size, "output_vocab": len(run.model.vocab)})


def choose_clips(run: BenchRun, results: dict) -> None:
    """The timed clips per length class and the test subset every system is scored on."""
    run.clips = select_clips(run.test, run.cfg.clips_per_length)
    results["clips"] = {k: {"n": len(v), "mean_s": statistics.fmean(c.seconds for c in v),
                            "names": [c.name for c in v]} for k, v in run.clips.items()}
    results["clips"]["8s"]["note"] = (f"test clips joined with 0.3 s gaps; our model reads the first "
                                      f"{run.model.context_seconds:g} s (its context), the cascade all 8 s")
    run.acc_utts = run.test[: run.cfg.accuracy_utts]
    results["accuracy_subset"] = {"n": len(run.acc_utts), "fingerprint": subset_fingerprint(run.acc_utts)}


def _add_onnx_systems(run: BenchRun, results: dict) -> None:
    from assistant.export import export_onnx, verify_export
    from assistant.nlu import load_pipeline

    _say("export onnx (+ int8)")
    onnx_dir, seconds, _ = timed(lambda: export_onnx(run.model, run.work / "onnx", quantize="int8", verify=False,
                                                     progress=False))
    verify = {p: verify_export(run.model, onnx_dir, precision=p) for p in ("fp32", "int8")}
    results["export"] = {"seconds": seconds, "verify": verify,
                         "sizes_mb": {p.name: p.stat().st_size / 1e6 for p in sorted(onnx_dir.glob("*.onnx"))}}
    run.onnx_dir, run.runtime = onnx_dir, load_pipeline(onnx_dir, runtime="onnx", threads=run.threads)
    run.systems["onnx"] = OursSystem("onnx", run.runtime, run.schema)
    run.systems["onnx-int8"] = OursSystem("onnx-int8", load_pipeline(onnx_dir, runtime="onnx-int8",
                                                                    threads=run.threads), run.schema)


def build_systems(run: BenchRun, results: dict) -> None:
    """Ours eager (and without its stock reading), ONNX fp32 / int8, the cascade peer; the text teacher."""
    from assistant.model.slu import SLUModel
    from assistant.nlu import NluPass

    model, cfg = run.model, run.cfg
    run.systems = {"eager": OursSystem("eager", model, run.schema)}
    if model.nlu is not None and model.nlu.uses_stock and model.has_stock_path:
        # What the stock reading costs: the same model and text pass without it (ONNX has no stock path).
        plain = SLUModel.from_pretrained(run.model_dir)
        plain.nlu = NluPass(model.nlu.teacher, model.nlu.weight)
        run.systems["eager-no-stock"] = OursSystem("eager-no-stock", plain, run.schema)
    if cfg.onnx:
        _add_onnx_systems(run, results)
    run.teacher = _teacher_if_available(run.schema, allow_training=not cfg.quick)
    if cfg.cascade:
        if run.teacher is None:
            results["cascade_skipped"] = "no cached text teacher (quick mode does not train one)"
        else:
            _say("load cascade peer (transformers ASR pipeline + MiniLM text classifier)")
            run.systems["cascade"] = CascadeSystem(run.teacher, run.schema, cfg.batch_size)
            results["cascade_key"] = cascade_key(run.teacher)


def measure_latency(run: BenchRun, results: dict) -> None:
    cfg = run.cfg
    # --quick: the slow cascade only on the 3 s clips (the ones the goals read).
    only = {"cascade": ["3s"]} if cfg.quick else None
    _say(f"latency, side by side: {', '.join(run.systems)}")
    results["latency"] = latency_side_by_side(run.systems, run.clips, cfg.reps, cfg.batch_reps, cfg.batch_size,
                                              warmup=not cfg.quick, only=only)


def _reused_cascade_accuracy(run: BenchRun, results: dict) -> dict | None:
    """--reuse-peer's cascade accuracy when it was scored on the same subset with the same peer."""
    reused, why = reusable_cascade_accuracy(run.cfg.reuse_peer, results["accuracy_subset"]["fingerprint"],
                                            results["cascade_key"])
    _say(f"cascade accuracy: {why}")
    if reused is None:
        results["reuse_peer_refused"] = why
    return reused


def measure_accuracy(run: BenchRun, results: dict) -> None:
    results["accuracy"] = {}
    for name, system in run.systems.items():
        if name == "cascade" and run.cfg.reuse_peer:
            reused = _reused_cascade_accuracy(run, results)
            if reused is not None:
                results["accuracy"][name] = reused
                continue
        _say(f"accuracy: {name} on {len(run.acc_utts)} test utterances")
        results["accuracy"][name] = accuracy(system, run.acc_utts, run.cfg.batch_size)


def measure_memory(run: BenchRun, results: dict) -> None:
    results["memory"] = {}
    # --quick: one probe (the eager model) shows the mechanism without a process start per system.
    for name in list(run.systems)[:1] if run.cfg.quick else run.systems:
        _say(f"memory probe: {name}")
        results["memory"][name] = memory_probe(name, run.model_dir, run.onnx_dir, run.threads, run.cfg.batch_size,
                                               run.clips["3s"], run.work)


def measure_throughput(run: BenchRun, results: dict) -> None:
    """fine_tune steps, RSFT candidate generation and reward scoring."""
    cfg = run.cfg
    _say("training throughput (fine_tune)")
    results["training"] = bench_training(run.model_dir, run.train, run.test[:2 if cfg.quick else 8], cfg.train_steps,
                                         cfg.batch_size, run.threads)
    _say("RSFT generation throughput")
    gen, gen_utts, cands = bench_rsft(run.model, run.model_dir, run.pool[: cfg.rsft_utts], cfg.batch_size)
    results["rsft"] = {"generation": gen}
    _say("RSFT scoring throughput")
    results["rsft"]["scoring"] = bench_scoring(gen_utts, cands, run.teacher)
    if run.teacher is None:
        results["rsft"]["scoring"]["teacher_skipped"] = "no cached text teacher (quick mode does not train one)"


def measure_profiles(run: BenchRun, results: dict) -> None:
    _say("profiles")
    from assistant.audio import load_audio
    from assistant.model.slu import SLUModel

    results["profile"] = {"ours": profile_ours(run.model, run.runtime, run.clips["3s"][0])}
    ref = SLUModel.from_pretrained(run.model_dir)
    waves = [load_audio(u.audio) for u in run.pool[: run.cfg.batch_size]]
    results["profile"]["rsft"] = profile_rsft(run.model, ref, waves, run.cfg.batch_size)


def measure_classifier_peer(run: BenchRun, results: dict) -> None:
    cfg = run.cfg
    if not cfg.classifier_steps:
        results["peer_classifier"] = {"skipped": "classifier_steps=0"}
        return
    _say(f"peer (2): WhisperForAudioClassification, {cfg.classifier_steps} HF Trainer steps")
    results["peer_classifier"] = bench_classifier_peer(run.schema, run.train, run.acc_utts, run.clips,
                                                       cfg.classifier_steps, cfg.batch_size,
                                                       run.model.context_seconds, cfg.reps)


# ==================================================================================================
# The run
# ==================================================================================================

def run_bench(cfg: BenchConfig) -> dict:
    import torch

    if cfg.quick:
        cfg = quick_config(cfg)
    threads = cfg.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    run = BenchRun(cfg, threads, load_schema(), Path(tempfile.mkdtemp(prefix="assistant-bench-")))
    results: dict = {"meta": _meta(cfg, threads)}
    try:
        load_model_and_data(run, results)
        choose_clips(run, results)
        build_systems(run, results)
        measure_latency(run, results)
        measure_accuracy(run, results)
        results["int8_decision"] = int8_decision(results)
        if cfg.memory:
            measure_memory(run, results)
        measure_throughput(run, results)
        if cfg.profile:
            measure_profiles(run, results)
        measure_classifier_peer(run, results)
        results["goals"] = evaluate_goals(results)
        results["findings"] = findings(results)
        results["meta"]["load_after"] = load_average()
    finally:
        shutil.rmtree(run.work, ignore_errors=True)
    return round_significant(results)


def cli(argv: list[str]) -> int:
    if argv and argv[0] == "_probe":   # the memory probe's fresh process (assistant.bench.harness)
        return probe_main(argv[1:])
    if "--sampler" in argv:       # RSFT sampling speed, ours vs transformers generate (assistant.bench.sampler)
        from assistant.bench.sampler import cli as sampler_cli

        return sampler_cli([a for a in argv if a != "--sampler"])
    if "--serving" in argv:       # the demo server under concurrent load (assistant.bench.serving)
        from assistant.bench.serving import cli as serving_cli

        return serving_cli([a for a in argv if a != "--serving"])
    cfg = parse_bench_config(BenchConfig, "assistant bench", __doc__, argv)
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")      # torch.profiler: no GPU-probe error lines on CPU hosts
    try:
        results = run_bench(cfg)
    except (FileNotFoundError, ManifestError) as e:
        print(f"assistant bench: {e}", file=sys.stderr)
        return 2
    out = Path(cfg.json or runs_dir() / "bench" / "bench.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(format_table(results))
    print(f"\nwrote {out}")
    return 0

