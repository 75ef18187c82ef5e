"""Where the time goes: phase breakdowns and torch.profiler top operators.

* ``profile_ours``: one 3 s command at batch 1 (features, encoder, decoder, parse), eager and ONNX;
* ``profile_rsft``: one RSFT generation batch (features, encoder, generate, reference scoring);
* ``top_ops``: the operators with the most self CPU time in a torch.profiler run (also ``bench --sampler``).
"""

from __future__ import annotations

import statistics

from assistant.bench.harness import Clip, timed
from assistant.frames import parse_frame


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


def _phases(model, clip: Clip, reps: int) -> dict:
    """Median milliseconds of each phase of one batch-1 call on ``clip`` (eager model or ONNX runtime)."""
    import torch

    times = {"features": [], "encoder": [], "decoder": [], "parse": []}
    tokens = 0
    for _ in range(reps):
        mels, t, _ = timed(model.features, [clip.wave])
        times["features"].append(t)
        with torch.inference_mode():
            enc, t, _ = timed(model.encode, mels)
            times["encoder"].append(t)
            cands, t, _ = timed(lambda: model.generate(enc, num_samples=0, greedy=True, max_new_tokens=96))
        times["decoder"].append(t)
        _, t, _ = timed(parse_frame, cands[0][0].text)
        times["parse"].append(t)
        tokens = len(cands[0][0].token_ids) + 1
    ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    total = sum(ms.values())
    return {"ms": ms, "share": {k: v / total for k, v in ms.items()}, "decoder_steps": tokens,
            "decoder_ms_per_step": ms["decoder"] / max(tokens, 1)}


def profile_ours(model, runtime, clip: Clip, reps: int = 3) -> dict:
    """Phase breakdown of one 3 s command at batch 1 (eager and ONNX) + torch.profiler top ops (eager)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    out = {"clip_s": clip.seconds, "eager": _phases(model, clip, reps)}
    if runtime is not None:
        out["onnx"] = _phases(runtime, clip, reps)
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
        mels, t_feat, _ = timed(model.features, waves)
        enc, t_enc, _ = timed(model.encode, mels)
        outs, t_gen, _ = timed(lambda: model.generate(enc, num_samples=8, greedy=True, seed=0))
        flat = [c.token_ids for cs in outs for c in cs]
        rows = [i for i, cs in enumerate(outs) for _ in cs]
        ref_enc, t_ref_enc, _ = timed(ref_model.encode, mels)
        _, t_ref, _ = timed(lambda: ref_model.sequence_logprobs(ref_enc, flat, expand=rows))
        with profile(activities=[ProfilerActivity.CPU], acc_events=True) as prof:
            model.generate(enc, num_samples=8, greedy=True, seed=0)
    ms = {"features": t_feat, "encoder": t_enc, "generate": t_gen, "ref_encoder": t_ref_enc, "ref_scoring": t_ref}
    ms = {k: 1000 * v for k, v in ms.items()}
    total = sum(ms.values())
    lengths = [len(c.token_ids) + 1 for cs in outs for c in cs]
    return {"utterances": len(waves), "ms": ms, "share": {k: v / total for k, v in ms.items()},
            "mean_tokens_per_candidate": statistics.fmean(lengths) if lengths else 0,
            "max_tokens": max(lengths) if lengths else 0, "generate_top_ops": top_ops(prof)}
