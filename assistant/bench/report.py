"""What the bench concludes and prints: goals, the int8 decision, findings, the table; the focused benches' output.

* ``evaluate_goals``: >= 5x faster than the cascade at >= its accuracy; RTF <= 0.05 for a 3 s command;
  >= 200 RSFT candidates/s, each met or missed;
* ``int8_decision``: keep int8 or not (speed against accuracy); ``findings``: a plain-language reading of
  the profiles for every missed goal;
* ``format_table``: the human table of ``assistant bench`` (the JSON is the results dict itself);
* ``BenchReportConfig`` / ``parse_bench_config`` / ``emit``: the --json / --out options and output that
  ``bench --sampler`` and ``bench --serving`` share.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from assistant.config import parse_command

GOAL_SPEEDUP = 5.0
GOAL_RTF_3S = 0.05
GOAL_CANDIDATES_PER_S = 200.0


# ==================================================================================================
# Goals and conclusions
# ==================================================================================================

def _cascade_goal(name: str, ours: dict, lat: dict, acc: dict, cascade_ms: float) -> dict:
    speedup = cascade_ms / ours["p50_ms"]
    delta = acc[name]["intent_accuracy"] - acc["cascade"]["intent_accuracy"]
    cascade_cpu = lat["cascade"]["3s"]["batch1"].get("cpu_p50_ms")
    cpu_speedup = cascade_cpu / ours["cpu_p50_ms"] if cascade_cpu and ours.get("cpu_p50_ms") else float("nan")
    return {"goal": f"{name}: >= {GOAL_SPEEDUP:g}x faster than the cascade (3 s, batch 1) at >= its intent accuracy",
            "measured": f"{speedup:.1f}x wall ({cpu_speedup:.1f}x CPU time), intent acc "
                        f"{acc[name]['intent_accuracy']:.3f} vs {acc['cascade']['intent_accuracy']:.3f}",
            "met": bool(speedup >= GOAL_SPEEDUP and delta >= 0)}


def _rtf_goal(name: str, ours: dict) -> dict:
    cpu_rtf = ours["cpu_p50_ms"] / 1000 / ours["audio_s"] if ours.get("cpu_p50_ms") else float("nan")
    return {"goal": f"{name}: RTF <= {GOAL_RTF_3S} for a 3 s command (batch 1, p50)",
            "measured": f"RTF {ours['rtf_p50']:.3f} wall ({ours['p50_ms']:.0f} ms); CPU time / audio "
                        f"{cpu_rtf:.3f}",
            "met": bool(ours["rtf_p50"] <= GOAL_RTF_3S)}


def _rsft_goal(gen: dict) -> dict:
    best = gen["generate"]["decoded_per_s"]
    return {"goal": f"RSFT generation >= {GOAL_CANDIDATES_PER_S:g} candidates/s (N=8 + greedy, decoded rows)",
            "measured": f"{best:.0f}/s without ref model, {gen['generate_with_ref']['decoded_per_s']:.0f}/s "
                        f"with ref log-probs ({gen['generate']['distinct_per_s']:.0f} distinct/s)",
            "met": bool(best >= GOAL_CANDIDATES_PER_S)}


def evaluate_goals(results: dict) -> list[dict]:
    goals = []
    lat, acc = results.get("latency", {}), results.get("accuracy", {})
    cascade = lat.get("cascade", {}).get("3s", {}).get("batch1", {}).get("p50_ms")
    for name in ("eager", "onnx", "onnx-int8"):
        ours = lat.get(name, {}).get("3s", {}).get("batch1", {})
        if not ours:
            continue
        if cascade and name in acc and "cascade" in acc:
            goals.append(_cascade_goal(name, ours, lat, acc, cascade))
        goals.append(_rtf_goal(name, ours))
    gen = results.get("rsft", {}).get("generation", {})
    if gen.get("generate"):
        goals.append(_rsft_goal(gen))
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


def _top_ops_note(label: str, top: list[dict]) -> list[str]:
    if not top:
        return []
    return [f"{label} top ops (self CPU): " + ", ".join(f"{t['op']} {t['share'] * 100:.0f}%" for t in top)]


def _ours_findings(ours: dict) -> list[str]:
    notes = []
    for name in ("eager", "onnx"):
        if name in ours:
            p = ours[name]
            parts = ", ".join(f"{k} {v:.0f} ms ({p['share'][k] * 100:.0f}%)" for k, v in p["ms"].items())
            notes.append(f"{name} 3 s command: {parts}; {p['decoder_steps']} decoder steps at "
                         f"{p['decoder_ms_per_step']:.1f} ms/step")
    return notes + _top_ops_note("eager", ours.get("eager_top_ops", [])[:5])


def _rsft_findings(rsft: dict) -> list[str]:
    parts = ", ".join(f"{k} {v:.0f} ms ({rsft['share'][k] * 100:.0f}%)" for k, v in rsft["ms"].items())
    notes = [f"RSFT batch of {rsft['utterances']} utts x 9 candidates: {parts}; "
             f"{rsft['mean_tokens_per_candidate']:.1f} tokens/candidate (max {rsft['max_tokens']})"]
    return notes + _top_ops_note("generate", rsft.get("generate_top_ops", [])[:5])


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
        notes += _ours_findings(ours)
    rsft = prof.get("rsft", {})
    if rsft and any("RSFT" in g["goal"] for g in missed):
        notes += _rsft_findings(rsft)
    return notes


# ==================================================================================================
# The table, section by section
# ==================================================================================================

def _latency_lines(results: dict) -> list[str]:
    meta = results["meta"]
    bkey = f"batch{meta['batch_size']}"
    lines = ["", f"{'latency':<11}{'clip':>5}{'b1 p50 ms':>11}{'b1 p95 ms':>11}{'cpu p50':>9}{'RTF p50':>9}"
                 f"{bkey + ' ms/utt':>17}{'RTF':>8}"]
    for name, rows in results.get("latency", {}).items():
        for label, row in rows.items():
            b1, bb = row["batch1"], row[bkey]
            lines.append(f"{name:<11}{label:>5}{b1['p50_ms']:>11.1f}{b1['p95_ms']:>11.1f}{b1['cpu_p50_ms']:>9.0f}"
                         f"{b1['rtf_p50']:>9.3f}{bb['per_utt_ms']:>17.1f}{bb['rtf']:>8.3f}")
    return lines


def _section(header: str, rows: dict, line) -> list[str]:
    """A blank line, ``header`` and ``line(name, row)`` per row; nothing when there are no rows."""
    return ["", header, *(line(name, row) for name, row in rows.items())] if rows else []


def _accuracy_line(name: str, a: dict) -> str:
    return (f"{name:<11}{a['n']:>5}{a['intent_accuracy']:>8.3f}{a['frame_accuracy']:>8.3f}"
            f"{a['slot_f1']:>9.3f}{a['wer']:>7.3f}{a['invalid_rate']:>9.3f}{(a['utt_per_s'] or 0):>8.2f}"
            + (f"  (reused from {a['reused_from']}, measured {a['measured_at']})" if a.get("reused_from") else ""))


def _memory_line(name: str, m: dict) -> str:
    if "error" in m:
        return f"{name:<11}  error: {m['error']}"
    return f"{name:<11}{m['load_delta_mb']:>9.0f}{m['rss_delta_mb']:>15.0f}{m['rss_peak_mb']:>13.0f}"


def _export_lines(results: dict) -> list[str]:
    lines = []
    exp = results.get("export", {})
    if exp.get("sizes_mb"):
        lines += ["", "export     " + ", ".join(f"{k} {v:.1f} MB" for k, v in exp["sizes_mb"].items())
                  + f"  ({exp['seconds']:.1f} s)"]
    if results.get("int8_decision"):
        lines.append(f"int8       {results['int8_decision']}")
    return lines


def _training_lines(tr: dict) -> list[str]:
    if "utt_per_s" in tr:
        return ["", f"training   fine_tune {tr['utt_per_s']:.1f} utt/s ({tr['step_s']:.2f} s/step of "
                    f"{tr['batch_size']}; freeze_encoder_layers={tr['freeze_encoder_layers']}, cache_encoder="
                    f"{tr['cache_encoder']}), setup {tr['setup_s']:.1f} s"]
    return [f"training   {tr}"] if tr else []


def _rsft_lines(rs: dict) -> list[str]:
    lines = []
    gen, sc = rs.get("generation", {}), rs.get("scoring", {})
    if gen.get("generate"):
        lines.append(f"rsft gen   {gen['generate']['decoded_per_s']:.1f} candidates/s decoded "
                     f"({gen['generate']['distinct_per_s']:.1f} distinct/s); with ref log-probs "
                     f"{gen['generate_with_ref']['decoded_per_s']:.1f}/s  [{gen['utterances']} utts x 9]")
    for name in ("verifier", "teacher", "verifier+teacher"):
        if name in sc:
            lines.append(f"rsft score {name:<17}{sc[name]['candidates_per_s']:>9.0f} candidates/s")
    return lines


def _peer_lines(pc: dict) -> list[str]:
    if pc.get("skipped"):
        return [f"peer (2)   skipped: {pc['skipped']}"]
    if not pc:
        return []
    b1 = pc["latency"]["3s"]["batch1"]
    return [f"peer (2)   WhisperForAudioClassification after {pc['steps']} Trainer steps: train "
            f"{pc['train_utt_per_s']:.1f} utt/s; 3 s b1 p50 {b1['p50_ms']:.0f} ms (RTF {b1['rtf_p50']:.3f}); "
            f"intent acc {pc['accuracy']['intent_accuracy']:.3f} (n={pc['accuracy']['n']}; intent only)"]


def _goal_lines(results: dict) -> list[str]:
    goals = results.get("goals", [])
    lines = [""] if goals else []
    lines += [f"[{'MET ' if g['met'] else 'MISS'}] {g['goal']}: {g['measured']}" for g in goals]
    return lines + [f"  - {note}" for note in results.get("findings", [])]


def format_table(results: dict) -> str:
    meta = results["meta"]
    lines = [f"model {meta['model']}  (context {meta['context_seconds']:g} s; 8 s clips are cut to it)  "
             f"threads {meta['threads']}  load avg {meta['load_before']} -> {meta['load_after']}"]
    lines += _latency_lines(results)
    lines += _section(f"{'accuracy':<11}{'n':>5}{'intent':>8}{'frame':>8}{'slot F1':>9}{'WER':>7}{'invalid':>9}"
                      f"{'utt/s':>8}", results.get("accuracy", {}), _accuracy_line)
    lines += _section(f"{'memory':<11}{'load MB':>9}{'peak delta MB':>15}{'peak RSS MB':>13}",
                      results.get("memory", {}), _memory_line)
    lines += _export_lines(results)
    lines += _training_lines(results.get("training", {}))
    lines += _rsft_lines(results.get("rsft", {}))
    lines += _peer_lines(results.get("peer_classifier") or {})
    lines += _goal_lines(results)
    return "\n".join(lines)


# ==================================================================================================
# The focused benches' options and output (bench --sampler, bench --serving)
# ==================================================================================================

@dataclass
class BenchReportConfig:
    """The options every focused benchmark (``bench --sampler``, ``--serving``) shares."""
    json: bool = field(default=False, metadata={"help": "print one JSON object (and nothing else) on stdout"})
    out: str | None = field(default=None, metadata={"help": "also write the JSON here"})


def parse_bench_config(cls: type, prog: str, doc: str, argv: list[str]):
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    return parse_command(cls, prog, doc, argv)


def emit(results: dict, cfg: BenchReportConfig, table) -> None:
    """Write the JSON to --out (if given) and print it, or the human table ``table(results)``."""
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results) if cfg.json else table(results))
