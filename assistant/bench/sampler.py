"""`assistant bench --sampler`: RSFT sampling speed, our sampler vs transformers' own ``generate``.

    assistant bench --sampler --json                     # one JSON object on stdout
    assistant bench --sampler --model runs/main/final    # a trained model (default: the packaged tiny.en)

On the same model and the same clips (espeak-ng voices reading commands; log-mels computed once,
untimed), side by side in one run:

* **ours**: ``SLUModel.encode`` + ``SLUModel.generate(num_samples=N, greedy=False)`` (the fast sampler,
  ``assistant.model.sampler``) for N = 8, 16, 32;
* **reference**: the same call on the previous decoder (``SLUModel.sampler = "reference"``: transformers'
  WhisperDecoder and its cache, driven by our lockstep loop), N = 16;
* **generate**: ``whisper.generate(input_features=..., decoder_input_ids=<the SLU prefix>,
  num_return_sequences=N, do_sample=True)``, N = 16 — transformers' sampler on the same Whisper, with its
  full vocabulary and the checkpoint's generation config.

Candidates/s counts sampled sequences (draws, duplicates included) per wall-clock second, encoder
included. Tokens/s counts generated tokens (with the end token). The model, sampling temperature 1 and
``max_new_tokens`` are the same for all; transformers samples from the full vocabulary, ours from the
restricted one, so the two may produce sequences of different lengths (see the tokens columns).
A per-stage profile of our sampler at N = 16 (encoder, prompt + cross-attention K/V, decoder steps,
sampling, row dropping, collection) and its top torch ops close the report.

Wall-clock numbers depend on what else runs on the machine: each measurement is the best of ``--reps``
runs, and the load average before and after is recorded.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field

from assistant.bench.harness import load_average, round_significant, synth_clips
from assistant.bench.profiling import top_ops
from assistant.bench.report import BenchReportConfig, emit, parse_bench_config
from assistant.data.grammar import domain_vocab_texts

GOAL_CANDIDATES_PER_S = 200.0
GOAL_SPEEDUP = 5.0


def _say(msg: str) -> None:
    print(f"bench --sampler: {msg}", file=sys.stderr, flush=True)


def _best(runs: list[dict]) -> dict:
    best = dict(min(runs, key=lambda r: r["seconds"]))
    best["runs_seconds"] = [round(r["seconds"], 4) for r in runs]
    return best


def time_ours(model, mels, n: int, max_new_tokens: int, reps: int, seed: int = 0) -> dict:
    import torch

    runs = []
    for _ in range(reps):
        start, cpu = time.perf_counter(), time.process_time()
        with torch.no_grad():
            enc = model.encode(mels)
            t_enc = time.perf_counter() - start
            outs = model.generate(enc, num_samples=n, greedy=False, seed=seed, max_new_tokens=max_new_tokens)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        draws = mels.shape[0] * n
        tokens = sum((len(c.token_ids) + int(c.finished)) * c.count for u in outs for c in u)
        runs.append({"n": n, "clips": mels.shape[0], "draws": draws, "seconds": wall, "cpu_seconds": cpu,
                     "encoder_seconds": t_enc, "candidates_per_second": draws / wall,
                     "tokens_per_second": tokens / wall, "mean_tokens": tokens / draws,
                     "distinct_per_clip": statistics.fmean(len(u) for u in outs),
                     "unfinished": sum(c.count for u in outs for c in u if not c.finished)})
    return _best(runs)


def time_generate(model, mels, n: int, max_new_tokens: int, reps: int, seed: int = 0) -> dict:
    """transformers' sampler: ``whisper.generate(num_return_sequences=n, do_sample=True)`` behind the SLU
    prefix (adapters on, as for the SLU task)."""
    import torch

    prefix = torch.tensor(model.slu_prefix, device=mels.device).expand(mels.shape[0] * n, -1)
    mask = torch.ones(mels.shape[0], mels.shape[2], dtype=torch.long, device=mels.device)
    runs = []
    for _ in range(reps):
        torch.manual_seed(seed)
        start, cpu = time.perf_counter(), time.process_time()
        with torch.no_grad():
            out = model.whisper.generate(input_features=mels, attention_mask=mask, decoder_input_ids=prefix,
                                         num_return_sequences=n, do_sample=True, top_k=0, top_p=1.0,
                                         temperature=1.0, max_new_tokens=max_new_tokens)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        seqs = (out.sequences if hasattr(out, "sequences") else out).tolist()
        if len(seqs) != mels.shape[0] * n:
            raise RuntimeError(f"transformers generate returned {len(seqs)} sequences, expected {mels.shape[0] * n}")
        lengths, texts = [], []
        for seq in seqs:
            if seq[:len(model.slu_prefix)] == model.slu_prefix:      # some versions return the prompt too
                seq = seq[len(model.slu_prefix):]
            end = seq.index(model.eot_id) + 1 if model.eot_id in seq else len(seq)
            lengths.append(end)
            texts.append(model.decode_tokens(seq[:end]))
        draws = len(seqs)
        distinct = statistics.fmean(len(set(texts[i * n:(i + 1) * n])) for i in range(mels.shape[0]))
        runs.append({"n": n, "clips": mels.shape[0], "draws": draws, "seconds": wall, "cpu_seconds": cpu,
                     "candidates_per_second": draws / wall, "tokens_per_second": sum(lengths) / wall,
                     "mean_tokens": sum(lengths) / draws, "distinct_per_clip": distinct,
                     "unfinished": sum(model.eot_id not in s for s in seqs)})
    return _best(runs)


def stage_profile(model, mels, n: int, max_new_tokens: int, seed: int = 0) -> dict:
    """Where our sampler's time goes at ``n`` samples per clip (one run, instrumented)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from assistant.model.sampler import FastDecoder

    generator = torch.Generator(device=mels.device.type).manual_seed(seed)
    timings: dict = {}
    with torch.no_grad():
        start = time.perf_counter()
        enc = model.encode(mels)
        timings["encoder"] = time.perf_counter() - start
        mark = time.perf_counter()
        decoder = FastDecoder(model)
        timings["weights"] = time.perf_counter() - mark
        tokens, logprob, finished, is_greedy = decoder.generate_group(enc, n, False, 1.0, 1.0, 0, max_new_tokens,
                                                                      generator, timings)
        mark = time.perf_counter()
        model.collect_candidates(tokens, logprob, finished, is_greedy, enc.shape[0], n)
        timings["collect"] = time.perf_counter() - mark
        total = time.perf_counter() - start
        with profile(activities=[ProfilerActivity.CPU], acc_events=True) as prof:
            model.generate(enc, num_samples=n, greedy=False, seed=seed, max_new_tokens=max_new_tokens)
    steps, row_steps = timings.pop("steps", 0), timings.pop("row_steps", 0)
    ms = {k: 1000 * v for k, v in timings.items()}
    return {"n": n, "ms": ms, "share": {k: v / (1000 * total) for k, v in ms.items()}, "total_ms": 1000 * total,
            "decoder_steps": steps, "row_steps": row_steps,
            "mean_rows_per_step": row_steps / steps if steps else 0.0,
            "us_per_row_step": 1e6 * timings.get("decoder", 0.0) / row_steps if row_steps else None,
            "top_ops": top_ops(prof)}


def compare_at_16(results: dict) -> None:
    """The headline numbers at N = 16 (ours against generate and the reference decoder) and the goals."""
    ours = results["ours"].get("16", {}).get("candidates_per_second")
    theirs = results.get("generate", {}).get("16", {}).get("candidates_per_second")
    results["ours_candidates_per_second"] = ours
    results["generate_candidates_per_second"] = theirs
    results["speedup_vs_generate"] = ours / theirs if ours and theirs else None
    if "reference" in results and ours:
        results["speedup_vs_reference"] = ours / results["reference"]["16"]["candidates_per_second"]
    results["goals"] = [
        {"goal": f">= {GOAL_CANDIDATES_PER_S:g} candidates/s at N=16", "value": ours,
         "met": bool(ours and ours >= GOAL_CANDIDATES_PER_S)},
        {"goal": f">= {GOAL_SPEEDUP:g}x transformers generate at N=16", "value": results["speedup_vs_generate"],
         "met": bool(results["speedup_vs_generate"] and results["speedup_vs_generate"] >= GOAL_SPEEDUP)},
    ]


def run_sampler_bench(model_path: str | None = None, clips: int = 8, ns=(8, 16, 32), max_new_tokens: int = 96,
                      reps: int = 2, threads: int | None = None, generate: bool = True, reference: bool = True) -> dict:
    import torch

    from assistant.model.slu import SLUModel

    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    results: dict = {"meta": {"threads": threads, "cpu_count": os.cpu_count(), "load_before": load_average(),
                              "python": platform.python_version(), "torch": torch.__version__,
                              "max_new_tokens": max_new_tokens, "reps": reps,
                              "time": time.strftime("%Y-%m-%d %H:%M:%S")}}
    _say(f"model {model_path or 'packaged tiny.en'}")
    model = SLUModel.from_pretrained(model_path or None, default_vocab=domain_vocab_texts).eval()
    waves, names = synth_clips(clips)
    mels = model.features(waves)
    results["meta"].update({"model": model_path or "packaged tiny.en (stock weights behind the SLU prefix)",
                            "context_seconds": model.context_seconds, "output_vocab": len(model.vocab),
                            "adapters": model.adapters is not None, "clips": names,
                            "clip_seconds": [round(w.numel() / 16000, 2) for w in waves]})
    with torch.no_grad():                                   # warm-up (allocator, first-call costs)
        model.generate(model.encode(mels[:2]), num_samples=4, greedy=False, seed=0, max_new_tokens=8)

    results["ours"] = {}
    for n in ns:
        _say(f"ours, N={n}")
        results["ours"][str(n)] = time_ours(model, mels, n, max_new_tokens, reps)
    if reference:
        _say("reference decoder, N=16")
        model.sampler = "reference"
        try:
            results["reference"] = {"16": time_ours(model, mels, 16, max_new_tokens, 1)}
        finally:
            model.sampler = "fast"
    if generate:
        _say("transformers generate, N=16")
        results["generate"] = {"16": time_generate(model, mels, 16, max_new_tokens, max(1, reps - 1))}
    _say("profile, N=16")
    results["profile"] = stage_profile(model, mels, 16, max_new_tokens)

    compare_at_16(results)
    results["meta"]["load_after"] = load_average()
    return round_significant(results)


def format_table(r: dict) -> str:
    lines = [f"sampler bench: {r['meta']['model']}, {len(r['meta']['clips'])} clips, "
             f"{r['meta']['threads']} threads, load {r['meta']['load_before'][0]:.2f} -> "
             f"{r['meta']['load_after'][0]:.2f}",
             f"{'system':<12}{'N':>4}{'cand/s':>10}{'tokens/s':>10}{'tokens':>8}{'distinct':>10}{'seconds':>9}"]
    for system in ("ours", "reference", "generate"):
        for n, row in r.get(system, {}).items():
            lines.append(f"{system:<12}{n:>4}{row['candidates_per_second']:>10.1f}{row['tokens_per_second']:>10.1f}"
                         f"{row['mean_tokens']:>8.1f}{row['distinct_per_clip']:>10.1f}{row['seconds']:>9.2f}")
    p = r["profile"]
    lines.append(f"profile (ours, N={p['n']}, {p['total_ms']:.0f} ms): " +
                 ", ".join(f"{k} {v:.0%}" for k, v in p["share"].items()) +
                 f"; {p['decoder_steps']} steps, {p['mean_rows_per_step']:.0f} rows/step")
    for goal in r["goals"]:
        value = goal["value"]
        lines.append(f"goal {goal['goal']}: {'met' if goal['met'] else 'missed'} "
                     f"({value:.2f})" if value is not None else f"goal {goal['goal']}: not measured")
    return "\n".join(lines)


@dataclass
class BenchSamplerConfig(BenchReportConfig):
    model: str | None = field(default=None, metadata={"help": "SLU model folder (none = the packaged tiny.en)"})
    clips: int = field(default=8, metadata={"help": "espeak-ng clips"})
    n: list[int] = field(default_factory=lambda: [8, 16, 32], metadata={
        "help": "samples per clip for ours (comma-separated; 16 is always run: it is the one reported)"})
    max_new_tokens: int = field(default=96, metadata={"help": "decoding bound of every sample"})
    reps: int = field(default=2, metadata={"help": "runs per measurement, the best is reported"})
    threads: int | None = field(default=None, metadata={"help": "torch threads (none = all cores)"})
    generate: bool = field(default=True, metadata={"help": "time transformers generate (false: skip it)"})
    reference: bool = field(default=True, metadata={"help": "time the reference decoder (false: skip it)"})

    def validate(self) -> None:
        for name in ("clips", "reps", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not self.n or min(self.n) < 1:
            raise ValueError(f"--n: every samples-per-clip count must be >= 1, got {self.n}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads} (none = all cores)")


def cli(argv: list[str]) -> int:
    cfg = parse_bench_config(BenchSamplerConfig, "assistant bench --sampler", __doc__, argv)
    ns = tuple(dict.fromkeys([*cfg.n, 16]))
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    warnings.filterwarnings("ignore", module="transformers")
    try:
        results = run_sampler_bench(cfg.model, cfg.clips, ns, cfg.max_new_tokens, cfg.reps, cfg.threads,
                                    cfg.generate, cfg.reference)
    except (FileNotFoundError, RuntimeError) as e:
        print(f"assistant bench --sampler: {e}", file=sys.stderr)
        return 2
    emit(results, cfg, format_table)
    return 0
