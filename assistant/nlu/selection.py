"""Which text-pass setting ships: dev's best, or the configured one unless dev's best beats it clearly.

Dev ranks ~220 settings of the text pass (weight x stock bonus x n-best) on 400 clips; the top few are
within a few clips of each other, so the one on top wins partly by luck on those clips (the winner's curse)
and the luck does not carry over to new clips. ``choose`` keeps the configured setting (``default``: the
pass as ``NluPass`` builds it, weight 1, no stock reading, the run's n-best) unless dev's best beats it on
an exact one-sided sign test (McNemar) over the clips where the two disagree, at level ``alpha``
(``alpha`` 1: dev's best, always).

``python -m assistant.nlu.selection RUN...`` measures the rules on dev alone, from the per-clip record the
main job keeps (``<run>/cache/text_pass_*.json``): choose the setting (and the speech model, as the main
job does) on a random half of dev, score it on the other half, over many halves.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np


def sign_test_p(default: np.ndarray, challenger: np.ndarray) -> float:
    """P(challenger wins at least as many of the discordant clips as it did | each is a fair coin)."""
    wins = int(np.sum(challenger & ~default))
    n = wins + int(np.sum(default & ~challenger))
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n


def best_choice(correct: dict[str, np.ndarray]) -> str:
    """The most accurate setting; ties go to the earliest (the dict's order is the order of preference)."""
    return max(correct, key=lambda k: correct[k].mean())    # max keeps the first of equals


def choose(correct: dict[str, np.ndarray], default: str, alpha: float) -> str:
    """``default`` unless dev's best setting beats it with sign-test p < ``alpha`` (``alpha`` >= 1: dev's best)."""
    best = best_choice(correct)
    if alpha >= 1 or best == default or default not in correct:
        return best
    return best if sign_test_p(correct[default], correct[best]) < alpha else default


def bits(correct: np.ndarray) -> str:
    return "".join("1" if c else "0" for c in correct)


def from_bits(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), dtype=np.uint8) == ord("1")


def default_choice(samples: int) -> str:
    """The configured pass's key in a text-pass table: weight 1, never the stock reading, the run's n-best."""
    return "w=1 b=-inf" + (f" n={samples}" if samples else "")


# --------------------------------------------------------------------------- measuring the rules on dev


def load_run(run: Path, field_teacher: bool = False) -> list[tuple[str, dict[str, np.ndarray], str]]:
    """(speech model, {setting: per-clip correct on dev}, default setting) per speech model of a run (and per
    RSFT model with the field teacher's text pass too, with ``field_teacher``: `assistant run --field-teacher true`), in the main job's order
    (supervised first, then the RSFT rounds)."""
    models = []
    for path in sorted((run / "cache").glob("text_pass_*.json")):
        kept = json.loads(path.read_text())
        if kept.get("teacher_dir") and not field_teacher:
            continue
        if not kept.get("correct_by_choice"):
            raise SystemExit(f"{path}: no per-clip record (made before it was kept); run "
                             f"`assistant run --output-dir {run} --stage text_pass --stop-stage text_pass` to remake it")
        correct = {k: from_bits(v) for k, v in kept["correct_by_choice"].items()}
        name = kept["name"] + (" + field teacher" if kept.get("teacher_dir") else "")
        models.append((name, correct, default_choice(kept.get("configured_samples", 0))))
    if not models:
        raise SystemExit(f"{run}/cache: no text_pass_*.json (has the run's text_pass stage run?)")
    return sorted(models, key=lambda m: (m[0] != "supervised", m[0]))


def pick(models, rows: np.ndarray, alpha: float) -> tuple[int, str]:
    """(model index, setting) the main job would ship from the dev clips ``rows``."""
    chosen = []
    for _, correct, default in models:
        key = choose({k: v[rows] for k, v in correct.items()}, default, alpha)
        chosen.append((correct[key][rows].mean(), key))
    m = max(range(len(models)), key=lambda i: chosen[i][0])      # max keeps the first of equals
    return m, chosen[m][1]


def held_out(models, alpha: float, splits: int, seed: int) -> np.ndarray:
    """Accuracy on the other half of dev of the setting chosen on a random half, per split."""
    n = len(next(iter(models[0][1].values())))
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(splits):
        order = rng.permutation(n)
        fit, score = order[: n // 2], order[n // 2:]
        m, key = pick(models, fit, alpha)
        out.append(models[m][1][key][score].mean())
    return np.array(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="main-job run folders")
    ap.add_argument("--alphas", default="1,0.2,0.05,0.01,0", help="rules to compare (1: dev's best; 0: always the default)")
    ap.add_argument("--splits", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    ap.add_argument("--field-teacher", action="store_true",
                    help="also offer the RSFT models with the field teacher's text pass, where a run has one "
                         "(as `assistant run --field-teacher true` does)")
    args = ap.parse_args(argv)
    alphas = [float(a) for a in args.alphas.split(",")]
    runs = {str(r): load_run(r, field_teacher=args.field_teacher) for r in args.runs}
    print(f"held-out half of dev, mean over {args.splits} random halves (chosen on the other half); "
          f"in brackets: the paired difference to alpha 1 (mean, share of halves where it is > 0 / < 0)")
    results = {}
    for run, models in runs.items():
        base = held_out(models, 1.0, args.splits, args.seed)
        results[run] = {}
        for a in alphas:
            acc = base if a == 1.0 else held_out(models, a, args.splits, args.seed)
            d = acc - base
            m, key = pick(models, np.arange(len(next(iter(models[0][1].values())))), a)
            results[run][a] = {"held_out_mean": float(acc.mean()), "diff_mean": float(d.mean()),
                               "share_better": float((d > 0).mean()), "share_worse": float((d < 0).mean()),
                               "all_dev_choice": f"{models[m][0]}: {key}",
                               "all_dev_accuracy": float(models[m][1][key].mean())}
            r = results[run][a]
            print(f"{run}  alpha {a:g}: {r['held_out_mean']:.4f} ({r['diff_mean']:+.4f}, {r['share_better']:.2f} / "
                  f"{r['share_worse']:.2f}); on all of dev it ships {r['all_dev_choice']} ({r['all_dev_accuracy']:.4f})")
    for a in alphas:
        print(f"mean over runs, alpha {a:g}: {np.mean([results[r][a]['held_out_mean'] for r in runs]):.4f} "
              f"({np.mean([results[r][a]['diff_mean'] for r in runs]):+.4f})")
    if args.json:
        args.json.write_text(json.dumps({r: {str(a): v for a, v in res.items()} for r, res in results.items()}, indent=1))


if __name__ == "__main__":
    main()
