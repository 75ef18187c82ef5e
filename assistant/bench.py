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

import argparse
import hashlib
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from assistant.config import ConfigError, add_dataclass_arguments, load_config, parse_config
from assistant.data.manifest import ManifestError, read_manifest
from assistant.frames import Frame, ParseResult, parse_frame
from assistant.metrics import score_frames
from assistant.model.convert import default_pretrained_dir
from assistant.model.interface import SpeechModel
from assistant.paths import generated_dir, resolve_model_dir, runs_dir
from assistant.rsft.rewards import build_reward_fns
from assistant.schema import load_schema

# torch, transformers, onnxruntime and the models are imported inside the functions that use them: the
# command sets its environment (threads, HF_HUB_OFFLINE, KINETO_LOG_LEVEL) first, and a memory probe
# imports them before its baseline.

SAMPLE_RATE = 16000
LENGTHS = {"1s": 1.0, "3s": 3.0, "8s": 8.0}
GOAL_SPEEDUP = 5.0
GOAL_RTF_3S = 0.05
GOAL_CANDIDATES_PER_S = 200.0


@dataclass
class BenchConfig:
    model: str = field(default="", metadata={"help": "model folder ('' = the newest best model under runs/; "
                                                      "--quick: a tiny random model)"})
    json: str = field(default="", metadata={"help": "JSON output ('' = runs/bench/bench.json)"})
    quick: bool = field(default=False, metadata={"help": "tiny version: a tiny random model unless --model, few "
                                                         "clips, short runs"})
    test_manifest: str = field(default="", metadata={"help": "clips + accuracy subset ('' = default corpus test split)"})
    train_manifest: str = field(default="", metadata={"help": "for the training benchmark ('' = default corpus)"})
    pool_manifest: str = field(default="", metadata={"help": "for the RSFT benchmarks ('' = default corpus pool)"})
    threads: int = 0                  # torch / onnxruntime threads (0 = all cores)
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
    reuse_peer: str = field(default="", metadata={"help": "an earlier bench.json: reuse its cascade *accuracy* "
                                                           "when the test subset and the peer are identical "
                                                           "(latency and memory are always measured)"})

    def validate(self) -> None:
        for name in ("clips_per_length", "batch_size", "reps", "batch_reps", "accuracy_utts", "train_steps", "rsft_utts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.classifier_steps < 0:
            raise ValueError(f"classifier_steps must be >= 0, got {self.classifier_steps}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")


QUICK = dict(clips_per_length=2, batch_size=2, reps=1, batch_reps=1, accuracy_utts=2, train_steps=1, rsft_utts=2,
             classifier_steps=0)


# ==================================================================================================
# Small utilities
# ==================================================================================================

def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # Linux: KiB


def _proc_status_mb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS. Needed because Linux keeps ru_maxrss
    across fork+exec: a probe started by a 2 GB bench process would otherwise start at 2 GB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    hwm = _proc_status_mb("VmHWM")
    return hwm if hwm is not None else _maxrss_mb()


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (empty where the OS has none): a busy machine skews timings."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def _timed(fn: Callable, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def round_significant(x, digits: int = 5):
    """Floats to ``digits`` significant digits (tiny export differences must not print as 0.0)."""
    if isinstance(x, float):
        return float(f"{x:.{digits}g}") if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: round_significant(v, digits) for k, v in x.items()}
    if isinstance(x, list):
        return [round_significant(v, digits) for v in x]
    return x


_T0 = time.perf_counter()


def _say(msg: str) -> None:
    print(f"bench [{time.perf_counter() - _T0:6.0f} s]: {msg}", file=sys.stderr, flush=True)


# ==================================================================================================
# Clips
# ==================================================================================================

@dataclass
class Clip:
    name: str
    wave: "object"        # torch.Tensor [samples]
    seconds: float


def _durations(utts) -> list[float]:
    import soundfile as sf

    out = []
    for u in utts:
        if u.duration:
            out.append(float(u.duration))
        else:
            try:
                out.append(sf.info(u.audio).duration)
            except Exception:   # noqa: BLE001 — unreadable files are simply not picked
                out.append(float("nan"))
    return out


def select_clips(utts, per_length: int) -> dict[str, list[Clip]]:
    """``per_length`` clips closest to 1 s and 3 s; 8 s clips are test clips joined with 0.3 s gaps
    (cut to exactly 8 s) because the corpus has no command that long."""
    import torch

    from assistant.audio import AudioError, load_audio

    durations = np.asarray(_durations(utts))
    clips: dict[str, list[Clip]] = {}
    used: set[int] = set()
    for label in ("1s", "3s"):
        target = LENGTHS[label]
        order = [int(i) for i in np.argsort(np.abs(durations - target)) if np.isfinite(durations[i])]
        if len([i for i in order if i not in used]) >= per_length:   # distinct clips per class when possible
            order = [i for i in order if i not in used]
        picked = []
        for i in order:
            try:
                wave = load_audio(utts[i].audio)
            except AudioError:
                continue
            picked.append(Clip(utts[i].id or Path(utts[i].audio).stem, wave, wave.numel() / SAMPLE_RATE))
            used.add(int(i))
            if len(picked) == per_length:
                break
        clips[label] = picked
    pieces = [c.wave for c in clips["3s"] + clips["1s"]]
    gap = torch.zeros(int(0.3 * SAMPLE_RATE))
    long_clips = []
    for k in range(per_length):
        parts, total, j = [], 0, k
        while total < 8 * SAMPLE_RATE:
            parts += [pieces[j % len(pieces)], gap]
            total += pieces[j % len(pieces)].numel() + gap.numel()
            j += 1
        wave = torch.cat(parts)[: 8 * SAMPLE_RATE]
        long_clips.append(Clip(f"concat-{k}", wave, 8.0))
    clips["8s"] = long_clips
    return clips


# ==================================================================================================
# Systems under test: waves -> frames
# ==================================================================================================

class OursSystem:
    """The SLU model (eager SLUModel or OnnxSLU) through assistant.inference.predict_waves."""

    def __init__(self, name: str, model: SpeechModel, schema):
        self.name, self.model, self.schema = name, model, schema

    def __call__(self, waves) -> list[ParseResult]:
        from assistant.inference import predict_waves

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # 8 s clips are longer than a 6 s context: expected, noted
            preds = predict_waves(self.model, list(waves), self.schema)
        return [ParseResult(p.valid, Frame(p.intent, p.slots, p.transcript)) for p in preds]


class CascadeSystem:
    """Stock transformers ASR pipeline (30 s padding, default generation) -> MiniLM text intent classifier."""

    name = "cascade"

    def __init__(self, teacher, schema, batch_size: int):
        from transformers import pipeline

        self.asr = pipeline("automatic-speech-recognition", model=str(default_pretrained_dir()), device="cpu")
        self.teacher, self.schema, self.batch_size = teacher, schema, batch_size

    def __call__(self, waves) -> list[ParseResult]:
        inputs = [{"raw": w.numpy(), "sampling_rate": SAMPLE_RATE} for w in waves]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = self.asr(inputs, batch_size=min(self.batch_size, len(inputs)))
        texts = [o["text"].strip() for o in out]
        frames = []
        for text, (intent, slots, _) in zip(texts, self.teacher.predict(texts)):
            self.schema.render_response(intent, slots)     # the response, as ours renders it
            frames.append(ParseResult(True, Frame(intent, slots, text)))
        return frames


# ==================================================================================================
# Latency and accuracy
# ==================================================================================================

def latency(system, clips: dict[str, list[Clip]], reps: int, batch_reps: int, batch_size: int,
            warmup: bool = True) -> dict:
    """One system's latency table (see ``latency_side_by_side``)."""
    return latency_side_by_side({"system": system}, clips, reps, batch_reps, batch_size, warmup)["system"]


def latency_side_by_side(systems: dict, clips: dict[str, list[Clip]], reps: int, batch_reps: int, batch_size: int,
                         warmup: bool = True, only: dict[str, list[str]] | None = None) -> dict:
    """Batch 1: one warm-up + ``reps`` calls cycling over the clips; batched: ``batch_reps`` calls.

    The systems take turns on every clip (the order rotating each repetition), so a change in the
    machine's load during the run hits every system alike instead of whichever was measured then.
    ``only``: system -> the length classes it runs (default: all).
    """
    out: dict = {name: {} for name in systems}
    for label, group in clips.items():
        active = [n for n in systems if only is None or label in only.get(n, clips)]
        if not active:
            continue
        if warmup:
            for name in active:
                systems[name]([group[0].wave])                    # warm-up (allocations, lazy init)
        walls = {n: [] for n in active}
        cpus = {n: [] for n in active}
        rtfs = {n: [] for n in active}
        for r in range(reps):
            clip = group[r % len(group)]
            for name in active[r % len(active):] + active[:r % len(active)]:
                _, wall, cpu = _timed(systems[name], [clip.wave])
                walls[name].append(wall)
                cpus[name].append(cpu)
                rtfs[name].append(wall / clip.seconds)
        batch = [group[i % len(group)].wave for i in range(batch_size)]
        audio = sum(group[i % len(group)].seconds for i in range(batch_size))
        batch_walls = {n: [] for n in active}
        for r in range(batch_reps):
            for name in active[r % len(active):] + active[:r % len(active)]:
                batch_walls[name].append(_timed(systems[name], batch)[1])
        for name in active:
            w = batch_walls[name]
            out[name][label] = {
                "batch1": {"n": reps, "p50_ms": 1000 * _percentile(walls[name], 50),
                           "p95_ms": 1000 * _percentile(walls[name], 95), "mean_ms": 1000 * statistics.fmean(walls[name]),
                           "cpu_p50_ms": 1000 * _percentile(cpus[name], 50), "rtf_p50": _percentile(rtfs[name], 50),
                           "rtf_p95": _percentile(rtfs[name], 95), "audio_s": statistics.fmean(c.seconds for c in group)},
                f"batch{batch_size}": {"n": batch_reps, "batch_p50_ms": 1000 * _percentile(w, 50),
                                       "per_utt_ms": 1000 * _percentile(w, 50) / batch_size,
                                       "rtf": _percentile(w, 50) / audio}}
    return out


def accuracy(system, utts, batch_size: int) -> dict:
    """Intent / frame accuracy, slot F1 and WER on ``utts``; unreadable files are counted, not scored."""
    from assistant.audio import AudioError, load_audio

    gold, pred, unreadable, seconds = [], [], 0, 0.0
    for start in range(0, len(utts), batch_size):
        chunk, waves = [], []
        for u in utts[start:start + batch_size]:
            try:
                waves.append(load_audio(u.audio))
                chunk.append(u)
            except AudioError:
                unreadable += 1
        if not waves:
            continue
        frames, wall, _ = _timed(system, waves)
        seconds += wall
        gold += [{"intent": u.intent, "slots": u.slots, "text": u.text} for u in chunk]
        pred += [{"valid": r.valid, "intent": r.frame.intent, "slots": r.frame.slots, "transcript": r.frame.transcript}
                 for r in frames]
    score = asdict(score_frames(gold, pred))
    score.update({"unreadable": unreadable, "seconds": seconds, "utt_per_s": len(gold) / seconds if seconds else None})
    return score


# ==================================================================================================
# Memory: one fresh process per system, ru_maxrss delta over a baseline taken after the imports
# ==================================================================================================

def _probe_main(argv: list[str]) -> int:
    """python -m assistant.bench _probe SYSTEM MODEL_DIR ONNX_DIR THREADS BATCH WAV..."""
    system_name, model_dir, onnx_dir, threads, batch = argv[0], argv[1], argv[2], int(argv[3]), int(argv[4])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import onnxruntime  # noqa: F401  — every probe imports the same modules: the baseline is comparable
    import soundfile as sf
    import torch
    import transformers  # noqa: F401

    from assistant.model.slu import SLUModel  # noqa: F401  (imported before the baseline, like the rest)

    torch.set_num_threads(threads)
    waves = [torch.from_numpy(sf.read(p, dtype="float32")[0]) for p in argv[5:]]
    schema = load_schema()
    method = "VmHWM after clear_refs" if _reset_peak_rss() else "ru_maxrss (inherited from the parent: upper bound)"
    baseline = _proc_status_mb("VmRSS") or _maxrss_mb()
    system = _build_system(system_name, model_dir, onnx_dir, threads, schema, batch)
    loaded = _peak_rss_mb()
    for w in waves[:2]:
        system([w])
    system([waves[i % len(waves)] for i in range(batch)])
    peak = _peak_rss_mb()
    print(json.dumps({"rss_baseline_mb": baseline, "rss_after_load_mb": loaded, "rss_peak_mb": peak,
                      "load_delta_mb": loaded - baseline, "rss_delta_mb": peak - baseline,
                      "ru_maxrss_mb": _maxrss_mb(), "method": method}))
    return 0


def _build_system(name: str, model_dir: str, onnx_dir: str, threads: int, schema, batch: int):
    if name == "eager":
        from assistant.nlu import load_pipeline

        return OursSystem(name, load_pipeline(model_dir), schema)
    if name in ("onnx", "onnx-int8"):
        from assistant.export import OnnxSLU

        return OursSystem(name, OnnxSLU(onnx_dir, "int8" if name == "onnx-int8" else "fp32", threads), schema)
    if name == "cascade":
        from assistant.nlu import default_teacher

        return CascadeSystem(default_teacher(schema, progress=False), schema, batch)
    raise ValueError(f"unknown system {name!r}")


def memory_probe(name: str, model_dir: Path, onnx_dir: Path | None, threads: int, batch: int,
                 clips: list[Clip], work: Path) -> dict:
    import soundfile as sf

    paths = []
    for i, c in enumerate(clips[:batch]):
        path = work / f"probe-{i}.wav"
        if not path.exists():
            sf.write(path, c.wave.numpy(), SAMPLE_RATE)
        paths.append(str(path))
    cmd = [sys.executable, "-m", "assistant.bench", "_probe", name, str(model_dir), str(onnx_dir or ""),
           str(threads), str(batch), *paths]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ==================================================================================================
# Training / RSFT throughput
# ==================================================================================================

def bench_training(model_dir: Path, train_utts, dev_utts, steps: int, batch_size: int, threads: int) -> dict:
    """Step time = (time of a 1 + ``steps`` step run - time of a 1 step run) / steps: both runs pay the same
    fixed costs (final dev evaluation, checkpoint writes), so the difference is pure training steps."""
    from assistant.nlu import load_pipeline
    from assistant.train import TrainConfig, examples_from_utterances, fine_tune

    # The recipe that trained this model (runs/NAME/config.yaml next to best/), else the defaults.
    recipe, source = TrainConfig(), "TrainConfig defaults"
    if (model_dir.parent / "config.yaml").is_file():
        try:
            recipe, source = load_config(TrainConfig, model_dir.parent / "config.yaml"), str(model_dir.parent / "config.yaml")
        except ConfigError:
            pass
    examples = examples_from_utterances(train_utts[: max(batch_size * (steps + 1), batch_size)])
    runs = {}
    for n_steps in (1, 1 + steps):
        model = load_pipeline(model_dir)     # as deployed: fine_tune's dev score reads with the text pass
        cfg = replace(recipe, max_steps=n_steps, batch_size=batch_size, warmup_steps=1, resume=False,
                      save_every_steps=10**9, threads=threads, context_seconds=model.context_seconds,
                      tiny_random=False)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            result = fine_tune(model, examples, dev_utts, cfg, Path(tmp), desc=f"bench-train-{n_steps}")
            runs[n_steps] = {"loop_s": result["seconds"], "total_s": time.perf_counter() - start}
        del model
    step_s = max(runs[1 + steps]["loop_s"] - runs[1]["loop_s"], 1e-9) / steps
    return {"batch_size": batch_size, "steps_timed": steps, "step_s": step_s, "utt_per_s": batch_size / step_s,
            "setup_s": runs[1]["total_s"] - runs[1]["loop_s"], "runs": {str(k): v for k, v in runs.items()},
            "recipe": source, "freeze_encoder_layers": recipe.freeze_encoder_layers,
            "cache_encoder": recipe.cache_encoder,
            "note": "setup_s = audio load + frozen-trunk encoding of the examples, paid once per fine_tune call"}


def bench_rsft(model, model_dir: Path, pool_utts, batch_size: int) -> tuple[dict, list, list]:
    """Candidate generation (N=8 + greedy) as the RSFT loop runs it: without and with the reference model."""
    from assistant.model.slu import SLUModel
    from assistant.rsft.generate import GenerateConfig, generate_candidates

    params = GenerateConfig(num_samples=8, greedy=True, batch_size=batch_size)
    rows = len(pool_utts) * (params.num_samples + 1)
    out = {"utterances": len(pool_utts), "decoded_per_utt": params.num_samples + 1}
    ref = SLUModel.from_pretrained(model_dir)
    cands = None
    with tempfile.TemporaryDirectory() as tmp:
        for label, ref_model in (("generate", None), ("generate_with_ref", ref)):
            path = Path(tmp) / f"{label}.jsonl"
            result, wall, _ = _timed(lambda: generate_candidates(model, pool_utts, path, params, ref_model=ref_model,
                                                                 seed=0, desc=label))
            kept = sum(len(c) for c in result)
            out[label] = {"seconds": wall, "decoded_per_s": rows / wall, "distinct_candidates": kept,
                          "distinct_per_s": kept / wall}
            cands = result
    return out, pool_utts, cands


def bench_scoring(utts, cands, teacher) -> dict:
    n = sum(len(c) for c in cands)
    out = {"candidates": n}
    if not n:
        return out
    fns = {"verifier": build_reward_fns({"verifier": 1.0})}
    if teacher is not None:
        fns["teacher"] = build_reward_fns({"teacher": 1.0}, teacher=teacher)
        fns["verifier+teacher"] = build_reward_fns({"verifier": 1.0, "teacher": 1.0}, teacher=teacher)
    for name, fn in fns.items():
        fn(utts[:1], cands[:1])                                   # warm-up
        _, wall, _ = _timed(fn, utts, cands)
        out[name] = {"seconds": wall, "candidates_per_s": n / wall}
    return out


# ==================================================================================================
# Peer (2): an audio classifier trained with the HF Trainer (intent only: no slots, no transcript)
# ==================================================================================================

class ClassifierSystem:
    """WhisperForAudioClassification: log-mel -> encoder -> mean pool -> intent. Same front end and context."""

    name = "classifier"

    def __init__(self, model, intents: list[str], n_frames: int):
        self.model, self.intents, self.n_frames = model.eval(), intents, n_frames

    def __call__(self, waves) -> list[ParseResult]:
        import torch

        from assistant.features import batch_log_mel

        with torch.inference_mode():
            logits = self.model(input_features=batch_log_mel(list(waves), self.n_frames)).logits
        return [ParseResult(True, Frame(self.intents[int(i)])) for i in logits.argmax(-1)]


def build_classifier_peer(intents: list[str], context_seconds: float, frozen_layers: int = 3):
    """The converted Whisper tiny.en encoder under a classification head, with our context and freezing."""
    import torch
    from torch import nn
    from transformers import WhisperForAudioClassification

    from assistant.features import frames_for_seconds

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = WhisperForAudioClassification.from_pretrained(
            str(default_pretrained_dir()), num_labels=len(intents), id2label=dict(enumerate(intents)),
            label2id={k: i for i, k in enumerate(intents)}, dtype=torch.float32)
    n_frames = frames_for_seconds(context_seconds)
    encoder = model.encoder
    table = encoder.embed_positions.weight.data[: n_frames // 2].clone()   # same truncation as SLUModel
    encoder.embed_positions = nn.Embedding(*table.shape)
    encoder.embed_positions.weight.data.copy_(table)
    encoder.embed_positions.requires_grad_(False)
    model.config.max_source_positions = encoder.config.max_source_positions = n_frames // 2
    for module in (encoder.conv1, encoder.conv2, *encoder.layers[:frozen_layers]):
        module.requires_grad_(False)
    return model, n_frames


def bench_classifier_peer(schema, train_utts, test_utts, clips: dict[str, list[Clip]], steps: int, batch_size: int,
                          context_seconds: float, reps: int) -> dict:
    """A short HF Trainer run (``steps`` x ``batch_size``), then the same latency / accuracy measurements."""
    import torch
    from transformers import Trainer, TrainingArguments

    from assistant.audio import AudioError, load_audio
    from assistant.features import batch_log_mel

    intents = sorted(schema.intents)
    index = {k: i for i, k in enumerate(intents)}
    model, n_frames = build_classifier_peer(intents, context_seconds)
    feats, labels = [], []
    for u in train_utts[: steps * batch_size]:
        try:
            feats.append(batch_log_mel([load_audio(u.audio)], n_frames)[0])
            labels.append(index[u.intent])
        except (AudioError, KeyError):
            continue

    class _Split(torch.utils.data.Dataset):
        def __len__(self):
            return len(feats)

        def __getitem__(self, i):
            return {"input_features": feats[i], "labels": torch.tensor(labels[i])}

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=batch_size, max_steps=steps,
                                 learning_rate=3e-4, warmup_steps=max(1, steps // 10), weight_decay=0.01,
                                 logging_strategy="no", save_strategy="no", report_to=[], use_cpu=True,
                                 dataloader_num_workers=0, disable_tqdm=True, seed=0)
        metrics = Trainer(model=model, args=args, train_dataset=_Split()).train().metrics
    system = ClassifierSystem(model, intents, n_frames)
    return {"steps": steps, "batch_size": batch_size, "train_utterances": len(feats),
            "train_seconds": float(metrics["train_runtime"]),           # transformers 5 reports strings
            "train_utt_per_s": float(metrics["train_samples_per_second"]),
            "latency": latency(system, {"3s": clips["3s"]}, reps, 1, batch_size),
            "accuracy": accuracy(system, test_utts, batch_size),
            "note": f"{steps} steps x {batch_size} with conv + 3 encoder layers frozen (as our recipe), no trunk "
                    "caching (the Trainer runs the frozen layers every step); not trained to convergence: the "
                    "accuracy is what this budget buys, and the output is an intent only (no slots/transcript)"}


# ==================================================================================================
# Profiles: where the time goes
# ==================================================================================================

def top_ops(prof, k: int = 12) -> list[dict]:
    """The ``k`` operators with the most self CPU time in a torch.profiler run, with their share of it."""
    rows = []
    for e in prof.key_averages():
        rows.append({"op": e.key, "calls": e.count, "self_cpu_ms": e.self_cpu_time_total / 1000.0})
    rows.sort(key=lambda r: -r["self_cpu_ms"])
    total = sum(r["self_cpu_ms"] for r in rows) or 1.0
    for r in rows:
        r["share"] = r["self_cpu_ms"] / total
    return rows[:k]


def profile_ours(model, runtime, clip: Clip, reps: int = 3) -> dict:
    """Phase breakdown of one 3 s command at batch 1 (eager and ONNX) + torch.profiler top ops (eager)."""
    import torch

    def phases(m) -> dict:
        times = {"features": [], "encoder": [], "decoder": [], "parse": []}
        tokens = 0
        for _ in range(reps):
            mels, t, _ = _timed(m.features, [clip.wave])
            times["features"].append(t)
            with torch.inference_mode():
                enc, t, _ = _timed(m.encode, mels)
                times["encoder"].append(t)
                cands, t, _ = _timed(lambda: m.generate(enc, num_samples=0, greedy=True, max_new_tokens=96))
            times["decoder"].append(t)
            _, t, _ = _timed(parse_frame, cands[0][0].text)
            times["parse"].append(t)
            tokens = len(cands[0][0].token_ids) + 1
        ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
        total = sum(ms.values())
        return {"ms": ms, "share": {k: v / total for k, v in ms.items()}, "decoder_steps": tokens,
                "decoder_ms_per_step": ms["decoder"] / max(tokens, 1)}

    out = {"clip_s": clip.seconds, "eager": phases(model)}
    if runtime is not None:
        out["onnx"] = phases(runtime)
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU], acc_events=True) as prof:
        enc = model.encode(model.features([clip.wave]))
        model.generate(enc, num_samples=0, greedy=True)
    out["eager_top_ops"] = top_ops(prof)
    return out


def profile_rsft(model, ref_model, waves, batch_size: int) -> dict:
    """Phase breakdown of one RSFT generation batch + torch.profiler top ops of its generate call."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    waves = waves[:batch_size]
    with torch.no_grad():
        mels, t_feat, _ = _timed(model.features, waves)
        enc, t_enc, _ = _timed(model.encode, mels)
        outs, t_gen, _ = _timed(lambda: model.generate(enc, num_samples=8, greedy=True, seed=0))
        flat = [c.token_ids for cs in outs for c in cs]
        rows = [i for i, cs in enumerate(outs) for _ in cs]
        ref_enc, t_ref_enc, _ = _timed(ref_model.encode, mels)
        _, t_ref, _ = _timed(lambda: ref_model.sequence_logprobs(ref_enc, flat, expand=rows))
        with profile(activities=[ProfilerActivity.CPU], acc_events=True) as prof:
            model.generate(enc, num_samples=8, greedy=True, seed=0)
    ms = {"features": t_feat, "encoder": t_enc, "generate": t_gen, "ref_encoder": t_ref_enc, "ref_scoring": t_ref}
    ms = {k: 1000 * v for k, v in ms.items()}
    total = sum(ms.values())
    lengths = [len(c.token_ids) + 1 for cs in outs for c in cs]
    return {"utterances": len(waves), "ms": ms, "share": {k: v / total for k, v in ms.items()},
            "mean_tokens_per_candidate": statistics.fmean(lengths) if lengths else 0,
            "max_tokens": max(lengths) if lengths else 0, "generate_top_ops": top_ops(prof)}


# ==================================================================================================
# Goals and the table
# ==================================================================================================

def evaluate_goals(results: dict) -> list[dict]:
    goals = []
    lat, acc = results.get("latency", {}), results.get("accuracy", {})
    cascade = lat.get("cascade", {}).get("3s", {}).get("batch1", {}).get("p50_ms")
    for name in ("eager", "onnx", "onnx-int8"):
        ours = lat.get(name, {}).get("3s", {}).get("batch1", {})
        if not ours:
            continue
        if cascade and name in acc and "cascade" in acc:
            speedup = cascade / ours["p50_ms"]
            delta = acc[name]["intent_accuracy"] - acc["cascade"]["intent_accuracy"]
            cascade_cpu = lat["cascade"]["3s"]["batch1"].get("cpu_p50_ms")
            cpu_speedup = cascade_cpu / ours["cpu_p50_ms"] if cascade_cpu and ours.get("cpu_p50_ms") else float("nan")
            goals.append({"goal": f"{name}: >= {GOAL_SPEEDUP:g}x faster than the cascade (3 s, batch 1) at >= its intent accuracy",
                          "measured": f"{speedup:.1f}x wall ({cpu_speedup:.1f}x CPU time), intent acc "
                                      f"{acc[name]['intent_accuracy']:.3f} vs {acc['cascade']['intent_accuracy']:.3f}",
                          "met": bool(speedup >= GOAL_SPEEDUP and delta >= 0)})
        cpu_rtf = ours["cpu_p50_ms"] / 1000 / ours["audio_s"] if ours.get("cpu_p50_ms") else float("nan")
        goals.append({"goal": f"{name}: RTF <= {GOAL_RTF_3S} for a 3 s command (batch 1, p50)",
                      "measured": f"RTF {ours['rtf_p50']:.3f} wall ({ours['p50_ms']:.0f} ms); CPU time / audio "
                                  f"{cpu_rtf:.3f}",
                      "met": bool(ours["rtf_p50"] <= GOAL_RTF_3S)})
    gen = results.get("rsft", {}).get("generation", {})
    if gen.get("generate"):
        best = gen["generate"]["decoded_per_s"]
        goals.append({"goal": f"RSFT generation >= {GOAL_CANDIDATES_PER_S:g} candidates/s (N=8 + greedy, decoded rows)",
                      "measured": f"{best:.0f}/s without ref model, {gen['generate_with_ref']['decoded_per_s']:.0f}/s "
                                  f"with ref log-probs ({gen['generate']['distinct_per_s']:.0f} distinct/s)",
                      "met": bool(best >= GOAL_CANDIDATES_PER_S)})
    return goals


def int8_decision(results: dict) -> str:
    acc, lat = results.get("accuracy", {}), results.get("latency", {})
    if "onnx-int8" not in acc or "onnx" not in acc:
        return "int8 not measured"
    d_acc = acc["onnx-int8"]["intent_accuracy"] - acc["onnx"]["intent_accuracy"]
    fp, q = lat["onnx"]["3s"]["batch1"], lat["onnx-int8"]["3s"]["batch1"]
    speed = fp["p50_ms"] / q["p50_ms"]
    cpu = f", {fp['cpu_p50_ms'] / q['cpu_p50_ms']:.2f}x by CPU time" if fp.get("cpu_p50_ms") and q.get("cpu_p50_ms") else ""
    keep = d_acc >= -0.005 and speed >= 1.1
    return (f"{'keep' if keep else 'do not use'} int8: {speed:.2f}x the fp32 ONNX speed (3 s, batch 1, wall{cpu}), "
            f"intent accuracy {d_acc * 100:+.1f} points")


def format_table(results: dict) -> str:
    lines = []
    meta = results["meta"]
    lines.append(f"model {meta['model']}  (context {meta['context_seconds']:g} s; 8 s clips are cut to it)  "
                 f"threads {meta['threads']}  load avg {meta['load_before']} -> {meta['load_after']}")
    lat = results.get("latency", {})
    bkey = f"batch{meta['batch_size']}"
    lines.append("")
    lines.append(f"{'latency':<11}{'clip':>5}{'b1 p50 ms':>11}{'b1 p95 ms':>11}{'cpu p50':>9}{'RTF p50':>9}"
                 f"{bkey + ' ms/utt':>17}{'RTF':>8}")
    for name, rows in lat.items():
        for label, row in rows.items():
            b1, bb = row["batch1"], row[bkey]
            lines.append(f"{name:<11}{label:>5}{b1['p50_ms']:>11.1f}{b1['p95_ms']:>11.1f}{b1['cpu_p50_ms']:>9.0f}"
                         f"{b1['rtf_p50']:>9.3f}{bb['per_utt_ms']:>17.1f}{bb['rtf']:>8.3f}")
    acc = results.get("accuracy", {})
    if acc:
        lines.append("")
        lines.append(f"{'accuracy':<11}{'n':>5}{'intent':>8}{'frame':>8}{'slot F1':>9}{'WER':>7}{'invalid':>9}{'utt/s':>8}")
        for name, a in acc.items():
            lines.append(f"{name:<11}{a['n']:>5}{a['intent_accuracy']:>8.3f}{a['frame_accuracy']:>8.3f}"
                         f"{a['slot_f1']:>9.3f}{a['wer']:>7.3f}{a['invalid_rate']:>9.3f}{(a['utt_per_s'] or 0):>8.2f}"
                         + (f"  (reused from {a['reused_from']}, measured {a['measured_at']})" if a.get("reused_from") else ""))
    mem = results.get("memory", {})
    if mem:
        lines.append("")
        lines.append(f"{'memory':<11}{'load MB':>9}{'peak delta MB':>15}{'peak RSS MB':>13}")
        for name, m in mem.items():
            if "error" in m:
                lines.append(f"{name:<11}  error: {m['error']}")
            else:
                lines.append(f"{name:<11}{m['load_delta_mb']:>9.0f}{m['rss_delta_mb']:>15.0f}{m['rss_peak_mb']:>13.0f}")
    exp = results.get("export", {})
    if exp.get("sizes_mb"):
        lines.append("")
        lines.append("export     " + ", ".join(f"{k} {v:.1f} MB" for k, v in exp["sizes_mb"].items())
                     + f"  ({exp['seconds']:.1f} s)")
    if results.get("int8_decision"):
        lines.append(f"int8       {results['int8_decision']}")
    tr = results.get("training", {})
    if "utt_per_s" in tr:
        lines.append("")
        lines.append(f"training   fine_tune {tr['utt_per_s']:.1f} utt/s ({tr['step_s']:.2f} s/step of "
                     f"{tr['batch_size']}; freeze_encoder_layers={tr['freeze_encoder_layers']}, cache_encoder="
                     f"{tr['cache_encoder']}), setup {tr['setup_s']:.1f} s")
    elif tr:
        lines.append(f"training   {tr}")
    rs = results.get("rsft", {})
    gen, sc = rs.get("generation", {}), rs.get("scoring", {})
    if gen.get("generate"):
        lines.append(f"rsft gen   {gen['generate']['decoded_per_s']:.1f} candidates/s decoded "
                     f"({gen['generate']['distinct_per_s']:.1f} distinct/s); with ref log-probs "
                     f"{gen['generate_with_ref']['decoded_per_s']:.1f}/s  [{gen['utterances']} utts x 9]")
    for name in ("verifier", "teacher", "verifier+teacher"):
        if name in sc:
            lines.append(f"rsft score {name:<17}{sc[name]['candidates_per_s']:>9.0f} candidates/s")
    pc = results.get("peer_classifier") or {}
    if pc.get("skipped"):
        lines.append(f"peer (2)   skipped: {pc['skipped']}")
    elif pc:
        b1 = pc["latency"]["3s"]["batch1"]
        lines.append(f"peer (2)   WhisperForAudioClassification after {pc['steps']} Trainer steps: train "
                     f"{pc['train_utt_per_s']:.1f} utt/s; 3 s b1 p50 {b1['p50_ms']:.0f} ms (RTF {b1['rtf_p50']:.3f}); "
                     f"intent acc {pc['accuracy']['intent_accuracy']:.3f} (n={pc['accuracy']['n']}; intent only)")
    goals = results.get("goals", [])
    if goals:
        lines.append("")
        for g in goals:
            lines.append(f"[{'MET ' if g['met'] else 'MISS'}] {g['goal']}: {g['measured']}")
    for note in results.get("findings", []):
        lines.append(f"  - {note}")
    return "\n".join(lines)


def findings(results: dict) -> list[str]:
    """Plain-language reading of the profiles, written for every missed goal."""
    notes = []
    for name, a in results.get("accuracy", {}).items():
        if name != "cascade" and a.get("invalid_rate", 0) > 0.5:
            notes.append(f"{name}: {a['invalid_rate'] * 100:.0f}% of outputs do not parse as frames: the checkpoint "
                         "was probably trained for another frame format (retrain it with the current code)")
    prof = results.get("profile", {})
    ours = prof.get("ours", {})
    missed = [g for g in results.get("goals", []) if not g["met"]]
    if ours and any("RTF" in g["goal"] or "faster" in g["goal"] for g in missed):
        for name in ("eager", "onnx"):
            if name in ours:
                p = ours[name]
                parts = ", ".join(f"{k} {v:.0f} ms ({p['share'][k] * 100:.0f}%)" for k, v in p["ms"].items())
                notes.append(f"{name} 3 s command: {parts}; {p['decoder_steps']} decoder steps at "
                             f"{p['decoder_ms_per_step']:.1f} ms/step")
        top = ours.get("eager_top_ops", [])[:5]
        if top:
            notes.append("eager top ops (self CPU): " + ", ".join(f"{t['op']} {t['share'] * 100:.0f}%" for t in top))
    rsft = prof.get("rsft", {})
    if rsft and any("RSFT" in g["goal"] for g in missed):
        parts = ", ".join(f"{k} {v:.0f} ms ({rsft['share'][k] * 100:.0f}%)" for k, v in rsft["ms"].items())
        notes.append(f"RSFT batch of {rsft['utterances']} utts x 9 candidates: {parts}; "
                     f"{rsft['mean_tokens_per_candidate']:.1f} tokens/candidate (max {rsft['max_tokens']})")
        top = rsft.get("generate_top_ops", [])[:5]
        if top:
            notes.append("generate top ops (self CPU): " + ", ".join(f"{t['op']} {t['share'] * 100:.0f}%" for t in top))
    return notes


# ==================================================================================================
# Reusing the cascade's accuracy (deterministic, independent of our model, and the slowest part)
# ==================================================================================================

def subset_fingerprint(utts) -> str:
    """Identifies the scored utterances: ids, labels and audio file sizes."""
    rows = []
    for u in utts:
        try:
            size = os.path.getsize(u.audio)
        except OSError:
            size = -1
        rows.append([u.id, u.text, u.intent, sorted((u.slots or {}).items()), size])
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def cascade_key(teacher) -> dict:
    """What the cascade's outputs depend on: the ASR weights, the text classifier and transformers."""
    import transformers

    weights = default_pretrained_dir() / "model.safetensors"
    return {"asr": str(default_pretrained_dir()), "asr_bytes": weights.stat().st_size if weights.exists() else -1,
            "teacher": (getattr(teacher, "info", {}) or {}).get("fingerprint"), "transformers": transformers.__version__}


def reusable_cascade_accuracy(path: str, fingerprint: str, key: dict) -> tuple[dict | None, str]:
    try:
        old = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        return None, f"{path}: unreadable ({e})"
    if old.get("accuracy_subset", {}).get("fingerprint") != fingerprint:
        return None, f"{path}: a different test subset"
    if old.get("cascade_key") != key:
        return None, f"{path}: a different cascade (weights, teacher or transformers version)"
    acc = old.get("accuracy", {}).get("cascade")
    if not acc or acc.get("reused_from"):
        return None, f"{path}: no measured cascade accuracy"
    return {**acc, "reused_from": str(path), "measured_at": old.get("meta", {}).get("time")}, "reused"


# ==================================================================================================
# The run
# ==================================================================================================

def _manifest(path: str, split: str) -> list:
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


def run_bench(cfg: BenchConfig) -> dict:
    import torch

    from assistant.model.slu import SLUModel
    from assistant.nlu import NluPass, load_pipeline

    if cfg.quick:
        cfg = BenchConfig(**{**asdict(cfg), **{k: min(getattr(cfg, k), v) for k, v in QUICK.items()}})
    threads = cfg.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    schema = load_schema()
    work = Path(tempfile.mkdtemp(prefix="assistant-bench-"))
    results: dict = {"meta": {"quick": cfg.quick, "threads": threads, "load_before": load_average(),
                              "python": platform.python_version(), "torch": torch.__version__,
                              "cpu_count": os.cpu_count(), "config": asdict(cfg),
                              "time": time.strftime("%Y-%m-%d %H:%M:%S")}}
    try:
        model_dir, problem = resolve_model_dir(cfg.model or None)   # the one resolver every command uses
        if problem and (cfg.model or not cfg.quick):   # a wrong --model is named before any data is read
            raise FileNotFoundError(problem + ("" if cfg.model else " (or --quick)"))
        test = _manifest(cfg.test_manifest, "test")
        train = _manifest(cfg.train_manifest, "train")
        pool = _manifest(cfg.pool_manifest, "pool")
        if problem:
            model_dir = _quick_model_dir(work, [test, train, pool])
        _say(f"model {model_dir}")
        model = load_pipeline(model_dir)
        results["meta"].update({"model": str(model_dir), "context_seconds": model.context_seconds,
                                "batch_size": cfg.batch_size, "output_vocab": len(model.vocab)})

        clips = select_clips(test, cfg.clips_per_length)
        results["clips"] = {k: {"n": len(v), "mean_s": statistics.fmean(c.seconds for c in v),
                                "names": [c.name for c in v]} for k, v in clips.items()}
        results["clips"]["8s"]["note"] = (f"test clips joined with 0.3 s gaps; our model reads the first "
                                          f"{model.context_seconds:g} s (its context), the cascade all 8 s")
        acc_utts = test[: cfg.accuracy_utts]
        results["accuracy_subset"] = {"n": len(acc_utts), "fingerprint": subset_fingerprint(acc_utts)}

        systems: dict = {"eager": OursSystem("eager", model, schema)}
        if model.nlu is not None and model.nlu.uses_stock and model.has_stock_path:
            # What the stock reading costs: the same model and text pass without it (ONNX has no stock path).
            plain = SLUModel.from_pretrained(model_dir)
            plain.nlu = NluPass(model.nlu.teacher, model.nlu.weight)
            systems["eager-no-stock"] = OursSystem("eager-no-stock", plain, schema)
        runtime = None
        if cfg.onnx:
            from assistant.export import OnnxSLU, export_onnx, verify_export

            _say("export onnx (+ int8)")
            onnx_dir, seconds, _ = _timed(lambda: export_onnx(model, work / "onnx", quantize="int8", verify=False,
                                                              progress=False))
            verify = {p: verify_export(model, onnx_dir, precision=p) for p in ("fp32", "int8")}
            results["export"] = {"seconds": seconds, "verify": verify,
                                 "sizes_mb": {p.name: p.stat().st_size / 1e6 for p in sorted(onnx_dir.glob("*.onnx"))}}
            runtime = OnnxSLU(onnx_dir, "fp32", threads)
            systems["onnx"] = OursSystem("onnx", runtime, schema)
            systems["onnx-int8"] = OursSystem("onnx-int8", OnnxSLU(onnx_dir, "int8", threads), schema)
        else:
            onnx_dir = None
        teacher = _teacher_if_available(schema, allow_training=not cfg.quick)
        if cfg.cascade:
            if teacher is None:
                results["cascade_skipped"] = "no cached text teacher (quick mode does not train one)"
            else:
                _say("load cascade peer (transformers ASR pipeline + MiniLM text classifier)")
                systems["cascade"] = CascadeSystem(teacher, schema, cfg.batch_size)
                results["cascade_key"] = cascade_key(teacher)

        # --quick: the slow cascade only on the 3 s clips (the ones the goals read).
        only = {"cascade": ["3s"]} if cfg.quick else None
        _say(f"latency, side by side: {', '.join(systems)}")
        results["latency"] = latency_side_by_side(systems, clips, cfg.reps, cfg.batch_reps, cfg.batch_size,
                                                  warmup=not cfg.quick, only=only)
        results["accuracy"] = {}
        for name, system in systems.items():
            if name == "cascade" and cfg.reuse_peer:
                reused, why = reusable_cascade_accuracy(cfg.reuse_peer, results["accuracy_subset"]["fingerprint"],
                                                        results["cascade_key"])
                _say(f"cascade accuracy: {why}")
                if reused is not None:
                    results["accuracy"][name] = reused
                    continue
                results["reuse_peer_refused"] = why
            _say(f"accuracy: {name} on {len(acc_utts)} test utterances")
            results["accuracy"][name] = accuracy(system, acc_utts, cfg.batch_size)
        results["int8_decision"] = int8_decision(results)

        if cfg.memory:
            results["memory"] = {}
            # --quick: one probe (the eager model) shows the mechanism without a process start per system.
            for name in list(systems)[:1] if cfg.quick else systems:
                _say(f"memory probe: {name}")
                results["memory"][name] = memory_probe(name, model_dir, onnx_dir, threads, cfg.batch_size,
                                                       clips["3s"], work)

        _say("training throughput (fine_tune)")
        results["training"] = bench_training(model_dir, train, test[:2 if cfg.quick else 8], cfg.train_steps,
                                             cfg.batch_size, threads)
        _say("RSFT generation throughput")
        gen, gen_utts, cands = bench_rsft(model, model_dir, pool[: cfg.rsft_utts], cfg.batch_size)
        results["rsft"] = {"generation": gen}
        _say("RSFT scoring throughput")
        results["rsft"]["scoring"] = bench_scoring(gen_utts, cands, teacher)
        if teacher is None:
            results["rsft"]["scoring"]["teacher_skipped"] = "no cached text teacher (quick mode does not train one)"

        if cfg.profile:
            _say("profiles")
            from assistant.audio import load_audio

            results["profile"] = {"ours": profile_ours(model, runtime, clips["3s"][0])}
            ref = SLUModel.from_pretrained(model_dir)
            waves = [load_audio(u.audio) for u in pool[: cfg.batch_size]]
            results["profile"]["rsft"] = profile_rsft(model, ref, waves, cfg.batch_size)
        if cfg.classifier_steps:
            _say(f"peer (2): WhisperForAudioClassification, {cfg.classifier_steps} HF Trainer steps")
            results["peer_classifier"] = bench_classifier_peer(schema, train, acc_utts, clips, cfg.classifier_steps,
                                                               cfg.batch_size, model.context_seconds, cfg.reps)
        else:
            results["peer_classifier"] = {"skipped": "classifier_steps=0"}
        results["goals"] = evaluate_goals(results)
        results["findings"] = findings(results)
        results["meta"]["load_after"] = load_average()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return round_significant(results)


def cli(argv: list[str]) -> int:
    if argv and argv[0] == "_probe":
        return _probe_main(argv[1:])
    if "--sampler" in argv:       # RSFT sampling speed, ours vs transformers generate (assistant.bench_sampler)
        from assistant.bench_sampler import cli as sampler_cli

        return sampler_cli([a for a in argv if a != "--sampler"])
    if "--serving" in argv:       # the demo server under concurrent load (assistant.bench_serving)
        from assistant.bench_serving import cli as serving_cli

        return serving_cli([a for a in argv if a != "--serving"])
    ap = argparse.ArgumentParser(prog="assistant bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(ap, BenchConfig)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")      # torch.profiler: no GPU-probe error lines on CPU hosts
    cfg = parse_config(BenchConfig, ap.parse_args(argv))
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


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
