"""Markdown tables from one or more main-job runs (``runs/<name>/summary.json``), side by side.

    python -m assistant.report runs/main runs/main_seed1

For each system of the test table: intent accuracy per run, their mean and spread (max - min), slot F1,
WER and the per-part accuracies (mean over runs); the engine x condition cells of each run; the dev
choice and each RSFT round's diagnostics; the speech model each run trained (tiny.en, base, ...) with its
training time, real-speech WER and, where ``assistant bench --json runs/<name>/bench.json`` was run on its
``final`` folder, latency and memory. README's measured numbers are printed by this command.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def load(run_dirs: list[str]) -> list[tuple[str, dict]]:
    out = []
    for d in run_dirs:
        path = Path(d) / "summary.json"
        if not path.is_file():
            raise SystemExit(f"{path}: not found; run `assistant run --output-dir {d}` first")
        out.append((Path(d).name, json.loads(path.read_text())))
    return out


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def system_key(name: str) -> str:
    """'final = rsft round 1 + text pass' -> 'final': runs may ship different speech models."""
    return name.split(" = ")[0] if name.startswith("final") else name


def test_table(runs: list[tuple[str, dict]]) -> str:
    names: list[str] = []
    for _, s in runs:
        names += [system_key(n) for n in s["test"] if system_key(n) not in names]
    head = " | ".join(f"intent ({r})" for r, _ in runs)
    lines = [f"| system | {head} | mean | spread | slot F1 | WER | field | novel |",
             "|---|" + "---|" * (len(runs) + 6)]
    for key in names:
        rows = [next((r for n, r in s["test"].items() if system_key(n) == key), None) for _, s in runs]
        parts = [next((p for n, p in s.get("test_by_part", {}).items() if system_key(n) == key), {}) for _, s in runs]
        have = [r for r in rows if r is not None]
        accs = [r["intent_accuracy"] for r in have]
        cells = " | ".join("-" if r is None else f"{r['intent_accuracy']:.4f}" for r in rows)
        part = {p: _mean([x[p] for x in parts if p in x]) for p in ("field", "novel") if any(p in x for x in parts)}
        lines.append(f"| {key} | {cells} | {_mean(accs):.4f} | {max(accs) - min(accs):.4f} | "
                     f"{_mean([r['slot_f1'] for r in have]):.4f} | {_mean([r['wer'] for r in have]):.4f} | "
                     f"{part.get('field', float('nan')):.4f} | {part.get('novel', float('nan')):.4f} |")
    shipped = [next(n for n in s["test"] if n.startswith("final")) for _, s in runs if any(n.startswith("final") for n in s["test"])]
    return "\n".join(lines) + ("\n\nshipped: " + "; ".join(f"{r}: {n}" for (r, _), n in zip(runs, shipped)) if shipped else "")


def cells_table(runs: list[tuple[str, dict]]) -> str:
    lines = ["| engine | condition | n | " + " | ".join(f"shipped ({r}) | stock cascade ({r})" for r, _ in runs) + " |",
             "|---|---|---|" + "---|---|" * len(runs)]
    first = runs[0][1]["test_by_engine_condition"]
    for engine, conds in first.items():
        for cond, cell in conds.items():
            vals = []
            for _, s in runs:
                c = s["test_by_engine_condition"].get(engine, {}).get(cond, {})
                vals.append(f"{c.get('shipped', float('nan')):.4f} | {c.get('stock_cascade', float('nan')):.4f}")
            lines.append(f"| {engine} | {cond} | {cell['n']} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def rounds_table(runs: list[tuple[str, dict]]) -> str:
    lines = ["| run | round | dev intent | kept / candidates | abstained | kept precision | seen | field | "
             "frame AUC | coverage (samples) | greedy | field: corrected / corrupted / abstained on greedy-wrong |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in runs:
        for r in s.get("rsft_rounds") or []:
            acc, q = r["acceptance"], r["oracle_diagnostics"]
            parts = q.get("per_part", {})
            teach = q.get("teaches", {}).get("field", {})
            fmt = lambda x: "-" if x is None else f"{x:.3f}"   # noqa: E731
            lines.append(
                f"| {name} | {r['round']} | {r['dev']['intent_accuracy']:.4f} | {acc['n_accepted']} / {acc['n_candidates']} | "
                f"{acc['n_utterances_kept_nothing'] / max(r['utterances'], 1):.3f} | {fmt(q.get('kept_frame_precision'))} | "
                f"{fmt(parts.get('seen', {}).get('kept_frame_precision'))} | {fmt(parts.get('field', {}).get('kept_frame_precision'))} | "
                f"{fmt(q.get('frame_reward_auc'))} | {fmt(q.get('frame_oracle_coverage'))} | {fmt(q.get('frame_greedy_accuracy'))} | "
                f"{teach.get('corrected', '-')} / {teach.get('corrupted', '-')} / {teach.get('abstained_greedy_wrong', '-')} |")
    return "\n".join(lines)


def choice_lines(runs: list[tuple[str, dict]]) -> str:
    out = []
    for name, s in runs:
        nlu = s.get("nlu") or {}
        by_model = ", ".join(f"{k} {v:.4f}" for k, v in (nlu.get("dev_intent_accuracy_by_model") or {}).items())
        out.append(f"- {name}: dev (speech model + text pass) {by_model}; ships {nlu.get('speech_model')} "
                   f"(weight {nlu.get('weight')}, stock bonus {nlu.get('stock_bonus')}); stock cascade on dev "
                   f"{nlu.get('dev_stock_cascade_accuracy', float('nan')):.4f}; stage seconds "
                   + ", ".join(f"{k} {v:.0f}" for k, v in s.get("timings_s", {}).items()))
    return "\n".join(out)


def speech_model_name(run_dir: Path, summary: dict) -> str:
    """The model the run's supervised stage started from (summary, else the saved training config)."""
    return str(summary.get("sft_model") or (_read_yaml(run_dir / "sft" / "config.yaml") or {}).get("model", "?"))


def _bench_cells(bench: dict | None) -> str:
    """3 s command, batch 1: p50 ms eager / ONNX / ONNX int8, int8 real-time factor, peak RSS eager / int8."""
    if not bench:
        return "- | - | -"
    lat = {k: v.get("3s", {}).get("batch1", {}) for k, v in bench.get("latency", {}).items()}
    mem = bench.get("memory", {})
    ms = " / ".join(f"{lat.get(k, {}).get('p50_ms', float('nan')):.0f}" for k in ("eager", "onnx", "onnx-int8"))
    rss = " / ".join(f"{mem.get(k, {}).get('rss_peak_mb', float('nan')):.0f}" for k in ("eager", "onnx-int8"))
    return f"{ms} | {lat.get('onnx-int8', {}).get('rtf_p50', float('nan')):.3f} | {rss}"


def models_table(run_dirs: list[str], runs: list[tuple[str, dict]]) -> str:
    """One row per run: its speech model, supervised accuracy (alone, + text pass on dev), the shipped
    system, training time, real-speech WER (stock prompt; SLU transcript) and, with a bench.json, serving cost."""
    lines = ["| run | model | dev: sup. alone / + text | test: sup. alone | test: shipped | slot F1 (shipped) | "
             "WER (sup.) | supervised training s (per epoch) | real speech WER: stock prompt / SLU | "
             "3 s p50 ms: eager / ONNX / int8 | RTF int8 | peak RSS MB: eager / int8 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run_dir, (name, s) in zip(run_dirs, runs):
        folder = Path(run_dir)
        sup = s["test"].get("supervised", {})
        final = next((r for n, r in s["test"].items() if n.startswith("final")), {})
        nlu = s.get("nlu") or {}
        dev = nlu.get("dev_intent_accuracy_by_model", {}).get("supervised", float("nan"))
        # the text pass's grid holds "speech model alone" (w=0, no stock reading) for the model it joined
        alone = nlu.get("dev_intent_accuracy_by_choice", {}).get("w=0 b=-inf") if nlu.get("speech_model") == "supervised" else None
        sft = _read(folder / "sft" / "result.json") or {}
        epochs = (_read_yaml(folder / "sft" / "config.yaml") or {}).get("epochs")
        per_epoch = f" ({sft['seconds'] / epochs:.0f})" if sft.get("seconds") and epochs else ""
        real = s.get("real_speech") or {}
        tuned = real.get("fine-tuned", {})
        lines.append(
            f"| {name} | {speech_model_name(folder, s)} | {'-' if alone is None else f'{alone:.4f}'} / {dev:.4f} | {sup.get('intent_accuracy', float('nan')):.4f} | "
            f"{final.get('intent_accuracy', float('nan')):.4f} | {final.get('slot_f1', float('nan')):.4f} | "
            f"{sup.get('wer', float('nan')):.4f} | {sft.get('seconds', float('nan')):.0f}{per_epoch} | "
            f"{tuned.get('wer', float('nan')):.4f} / {tuned.get('slu_wer', float('nan')):.2f} | "
            f"{_bench_cells(_read(folder / 'bench.json'))} |")
    return "\n".join(lines)


def _correct(run_dir: Path, system: str, gold: dict[str, str]) -> dict[str, bool] | None:
    """Clip id -> intent right, from the run's kept test predictions of one system (None if not kept)."""
    from assistant.main_job import test_predictions_file

    kept = _read(test_predictions_file(run_dir, system))
    if kept is None:
        return None
    return {i: p.get("intent") == gold[i] for i, p in zip(kept["ids"], kept["predictions"]) if i in gold}


def _wins(pair: np.ndarray) -> tuple[int, int, float]:
    """Clips only the challenger (column 1) gets right, only the default (column 0) does, and the sign test."""
    from assistant.nlu.selection import sign_test_p

    return (int(np.sum(pair[:, 1] & ~pair[:, 0])), int(np.sum(pair[:, 0] & ~pair[:, 1])),
            sign_test_p(pair[:, 0], pair[:, 1]))


def paired_lines(run_dirs: list[str], runs: list[tuple[str, dict]]) -> str:
    """Shipped vs supervised + text pass on the same clips: the clips only one of them gets right and an exact
    sign test on them (per run and pooled); and how many of the clips RSFT alone fixes over the supervised model
    the text pass had already fixed (the overlap that keeps RSFT's gain over supervised + text pass small)."""
    lines, pooled = [], np.zeros((0, 2), dtype=bool)
    for d, (name, s) in zip(run_dirs, runs):
        shipped = next((n for n in s["test"] if n.startswith("final")), None)
        gold_file = Path(d) / "test_predictions.jsonl"
        if shipped is None or not gold_file.is_file():
            lines.append(f"- {name}: no shipped system or no test_predictions.jsonl")
            continue
        rows = [json.loads(line) for line in gold_file.read_text().splitlines() if line.strip()]
        gold = {r["id"]: r["gold_intent"] for r in rows}
        speech = shipped.split(" = ", 1)[-1].removesuffix(" + text pass")
        right = {k: _correct(Path(d), k, gold) for k in (shipped, "supervised + text pass", "supervised", speech)}
        if any(v is None for v in right.values()):
            lines.append(f"- {name}: test predictions not kept for " + ", ".join(k for k, v in right.items() if v is None))
            continue
        ids = sorted(right[shipped])
        pair = np.array([[right["supervised + text pass"][i], right[shipped][i]] for i in ids], dtype=bool)
        pooled = np.concatenate([pooled, pair])
        fixed_alone = [i for i in ids if right[speech][i] and not right["supervised"][i]]
        won, lost, p = _wins(pair)
        lines.append(f"- {name}: {shipped} right where supervised + text pass is wrong on {won} clips, the reverse on "
                     f"{lost} (sign test p = {p:.3f}), both wrong on {int(np.sum(~pair.any(axis=1)))}; {speech} alone fixes {len(fixed_alone)} "
                     f"clips over supervised alone, {sum(right['supervised + text pass'][i] for i in fixed_alone)} of "
                     f"them already right with supervised + text pass")
    if len(lines) > 1 and len(pooled):
        won, lost, p = _wins(pooled)
        lines.append(f"- pooled: {won} vs {lost} (sign test p = {p:.3f})")
    return "\n".join(lines)


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _read_yaml(path: Path) -> dict | None:
    import yaml

    return yaml.safe_load(path.read_text()) if path.is_file() else None


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    runs = load(argv)
    print("## test (600 clips)\n\n" + test_table(runs) + "\n\n## test per engine x condition\n\n" + cells_table(runs)
          + "\n\n## shipped vs supervised + text pass, clip by clip\n\n" + paired_lines(argv, runs)
          + "\n\n## RSFT rounds\n\n" + rounds_table(runs) + "\n\n## dev choice\n\n" + choice_lines(runs)
          + "\n\n## speech models\n\n" + models_table(argv, runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
