"""The measuring harness every benchmark uses: clips, timing, latency / accuracy tables, the memory probe.

* clips: ``select_clips`` (test clips of ~1 s and ~3 s, ~8 s made by joining test clips) and
  ``synth_clips`` (espeak-ng voices reading commands, for ``bench --sampler`` / ``--serving``);
* timing: ``timed`` (wall and CPU seconds of one call), ``latency_side_by_side`` (systems taking turns
  clip by clip), ``accuracy`` (frame scores of a system on utterances);
* memory: ``memory_probe`` starts ``python -m assistant.bench _probe ...`` (``probe_main``), a fresh
  process per system, and reads its peak-RSS delta over a baseline taken after the imports;
* machine state and output: ``load_average``, ``round_significant``.

A system is any ``waves -> list[ParseResult]`` callable (``assistant.bench.systems``).
"""

from __future__ import annotations

import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from assistant.bench.systems import SAMPLE_RATE, build_system
from assistant.metrics import score_frames
from assistant.schema import load_schema

LENGTHS = {"1s": 1.0, "3s": 3.0, "8s": 8.0}
COMMANDS = [
    "turn on the kitchen lights", "set an alarm for seven thirty", "play some jazz music",
    "what's the weather like tomorrow", "turn the volume down", "remind me to call mom at five",
    "stop the music", "dim the lights in the bedroom", "what time is it", "add milk to my shopping list",
    "turn off the heating", "tell me a joke",
]


# ==================================================================================================
# Small utilities
# ==================================================================================================

def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (empty where the OS has none): a busy machine skews timings."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def timed(fn: Callable, *args):
    """``(fn(*args), wall seconds, CPU seconds)``."""
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


def _closest_clips(utts, durations, target: float, per_length: int, used: set[int]) -> list[Clip]:
    """``per_length`` readable clips closest to ``target`` seconds, distinct from ``used`` when possible."""
    from assistant.audio import AudioError, load_audio

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
    return picked


def _joined_clips(pieces, per_length: int) -> list[Clip]:
    """``per_length`` clips of exactly 8 s: ``pieces`` in turn, joined with 0.3 s of silence."""
    import torch

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
    return long_clips


def select_clips(utts, per_length: int) -> dict[str, list[Clip]]:
    """``per_length`` clips closest to 1 s and 3 s; 8 s clips are test clips joined with 0.3 s gaps
    (cut to exactly 8 s) because the corpus has no command that long."""
    durations = np.asarray(_durations(utts))
    used: set[int] = set()
    clips = {label: _closest_clips(utts, durations, LENGTHS[label], per_length, used) for label in ("1s", "3s")}
    clips["8s"] = _joined_clips([c.wave for c in clips["3s"] + clips["1s"]], per_length)
    return clips


def synth_clips(n: int) -> tuple[list, list[str]]:
    """``n`` commands read by distinct espeak-ng voices (16 kHz waves), deterministic."""
    from assistant.audio import to_mono_16k
    from assistant.data.tts import list_voices, synthesize

    voices = list_voices(["espeak"])
    if not voices:
        raise RuntimeError("no espeak-ng voice available (pip install espeakng-loader)")
    waves, names = [], []
    for i in range(n):
        voice, text = voices[(i * 37) % len(voices)], COMMANDS[i % len(COMMANDS)]
        wave, sr = synthesize(voice, text)
        waves.append(to_mono_16k(wave, sr))
        names.append(f"{voice.id}: {text}")
    return waves, names


# ==================================================================================================
# Latency and accuracy
# ==================================================================================================

def latency(system, clips: dict[str, list[Clip]], reps: int, batch_reps: int, batch_size: int,
            warmup: bool = True) -> dict:
    """One system's latency table (see ``latency_side_by_side``)."""
    return latency_side_by_side({"system": system}, clips, reps, batch_reps, batch_size, warmup)["system"]


def _in_turn(active: list[str], r: int) -> list[str]:
    """The systems in the order of repetition ``r`` (rotated by one each repetition)."""
    return active[r % len(active):] + active[:r % len(active)]


def _latency_row(walls, cpus, rtfs, batch_walls, group: list[Clip], reps: int, batch_reps: int,
                 batch_size: int, audio: float) -> dict:
    return {
        "batch1": {"n": reps, "p50_ms": 1000 * percentile(walls, 50),
                   "p95_ms": 1000 * percentile(walls, 95), "mean_ms": 1000 * statistics.fmean(walls),
                   "cpu_p50_ms": 1000 * percentile(cpus, 50), "rtf_p50": percentile(rtfs, 50),
                   "rtf_p95": percentile(rtfs, 95), "audio_s": statistics.fmean(c.seconds for c in group)},
        f"batch{batch_size}": {"n": batch_reps, "batch_p50_ms": 1000 * percentile(batch_walls, 50),
                               "per_utt_ms": 1000 * percentile(batch_walls, 50) / batch_size,
                               "rtf": percentile(batch_walls, 50) / audio}}


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
            for name in _in_turn(active, r):
                _, wall, cpu = timed(systems[name], [clip.wave])
                walls[name].append(wall)
                cpus[name].append(cpu)
                rtfs[name].append(wall / clip.seconds)
        batch = [group[i % len(group)].wave for i in range(batch_size)]
        audio = sum(group[i % len(group)].seconds for i in range(batch_size))
        batch_walls = {n: [] for n in active}
        for r in range(batch_reps):
            for name in _in_turn(active, r):
                batch_walls[name].append(timed(systems[name], batch)[1])
        for name in active:
            out[name][label] = _latency_row(walls[name], cpus[name], rtfs[name], batch_walls[name], group, reps,
                                            batch_reps, batch_size, audio)
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
        frames, wall, _ = timed(system, waves)
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


def probe_main(argv: list[str]) -> int:
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
    system = build_system(system_name, model_dir, onnx_dir, threads, schema, batch)
    loaded = _peak_rss_mb()
    for w in waves[:2]:
        system([w])
    system([waves[i % len(waves)] for i in range(batch)])
    peak = _peak_rss_mb()
    print(json.dumps({"rss_baseline_mb": baseline, "rss_after_load_mb": loaded, "rss_peak_mb": peak,
                      "load_delta_mb": loaded - baseline, "rss_delta_mb": peak - baseline,
                      "ru_maxrss_mb": _maxrss_mb(), "method": method}))
    return 0


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
