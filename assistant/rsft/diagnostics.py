"""Why did a round help or not? Oracle diagnostics of a persisted RSFT round (never fed back to training).

Reads a round's ``scored.jsonl`` and ``decisions.jsonl`` and the pool's hidden gold labels, and answers
the three questions that decide whether RSFT can beat plain pseudo-labelling:

* **diversity** — ``oracle_coverage``: share of utterances with at least one correct candidate among the
  N samples + greedy (no reward can keep a correct frame that was never sampled), vs ``greedy_accuracy``
  (what argmax pseudo-labelling keeps);
* **reward quality** — ``reward_auc``: probability that a correct candidate of an utterance out-scores an
  incorrect one of the same utterance (0.5 = the reward is blind, 1 = perfect); ``pick_accuracy``: on
  utterances with both kinds, how often the top-reward candidate is a correct one — to beat argmax
  pseudo-labelling it must beat ``greedy_accuracy_mixed``, the greedy candidate's accuracy there;
* **what was kept** — ``kept_precision``: share of accepted frames that are correct, and
  ``kept_precision_greedy`` for the greedy ones among them;
* **what the kept set can teach** — ``teaches``, per phrasing part of the pool (seen / field): utterances
  the round ``corrected`` (greedy frame wrong, kept frame right: the only new knowledge a round adds),
  ``corrupted`` (greedy right, kept wrong), ``confirmed`` (both right), ``confirmed_errors`` (both wrong)
  and the ones it abstained on, split by whether greedy was right.

* **what the targets teach the ear** — ``targets``: the WER of the fine-tuning targets' transcripts
  (``kept.jsonl``, written after ``transcript_target`` picked them) against the gold text, next to the
  greedy transcripts' WER on the same clips and on the whole pool. The oracle's targets are gold (WER 0):
  a rule can pick the right frame and still teach the model to mis-hear.

"Correct" is intent accuracy's notion (intent exact); the ``frame_`` variants also need the slots exact.

    python -m assistant.rsft.diagnostics runs/experiment/seed_0/c_rsft_label_free/round_1 data/generated/default/pool.jsonl

``--against OTHER_ROUND_DIR`` sets two rules side by side on the same pool (e.g. RSFT that abstains vs
pseudo-labels on every clip): how right each one's labels are on the clips this round kept and on the ones
it left out, and what each keeps per recording condition and engine (``kept_by``) — is abstaining worth the
labels it gives up?

    python -m assistant.rsft.diagnostics C_ROUND_1 POOL_MANIFEST --against B_PRIME_ROUND_1

``--shares 0.5,0.7,0.9,1`` replays the round's acceptance rule with a curriculum share instead of its
bars (``accept.curriculum``: the surest share of the pool by vote, then text confidence) and reports each
share's label precision: the precision / coverage curve a curriculum or a loss weight is chosen from
(``--plot curve.png`` draws it).

    python -m assistant.rsft.diagnostics ROUND_DIR POOL_MANIFEST --shares 0.5,0.6,0.7,0.8,0.9,1 --plot curve.png

``--grid 'agreement=0,0.5,1;vote=0,1,2'`` tries every weighting of the round's stored rewards and reports the
best ones' top-candidate precision next to the round's own total and the oracle: is a better label-free pick
a matter of weights, or does it need a new signal?

    python -m assistant.rsft.diagnostics ROUND_DIR POOL_MANIFEST --grid 'agreement=0,0.5,1,2;vote=0,1,2,4'

``--compare`` ranks the round's candidates by each reward alone (the ones in ``scored.jsonl`` plus rewards
computed afresh, e.g. ``target_likelihood`` under Whisper base): which reward tells right from wrong.

    python -m assistant.rsft.diagnostics ROUND_DIR POOL_MANIFEST --compare target_likelihood --target-model base

``--misses`` says where the round's pick (its total reward) goes wrong, per phrasing part and recording
condition: the top candidate is right; a right frame was sampled with the top's own transcript (the
frame, not the hearing, is wrong); a right frame was sampled with another transcript (a hearing the
pick passed over); or no candidate is right (no reward can help: more draws or a better model must).
It also gives the gold frame's rank among the distinct frames (top-k coverage).

    python -m assistant.rsft.diagnostics ROUND_DIR POOL_MANIFEST --misses
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from assistant.config import ConfigError, parse_command, run_command


def _pairs_auc(good: list[float], bad: list[float]) -> tuple[float, int]:
    """Sum over (correct, incorrect) pairs of 1[good > bad] + 0.5·1[tie], and the number of pairs."""
    if not good or not bad:
        return 0.0, 0
    g, b = np.asarray(good)[:, None], np.asarray(bad)[None, :]
    return float((g > b).sum() + 0.5 * (g == b).sum()), g.size * b.size


def teaching_table(scored, decisions, gold: dict[str, tuple[str, dict]], parts: dict[str, str]) -> dict:
    """{part: {corrected, corrupted, confirmed, confirmed_errors, abstained_greedy_wrong,
    abstained_greedy_right, intent_only_right, intent_only_wrong}} over utterances, with frame correctness
    (intent + slots exact); an utterance kept for its intent only (``accept.abstain_scope``) is counted
    apart, by whether that intent is right."""
    accepted = {(d.utt_id, d.index): d.scope for d in decisions if d.accepted}
    greedy_ok: dict[str, bool] = {}
    kept_ok: dict[str, bool] = {}
    intent_only: dict[str, bool] = {}
    for s in scored:
        if s.utt_id not in gold:
            continue
        intent, slots = gold[s.utt_id]
        f = s.candidate.frame
        right = _frame_right(f, (intent, slots))
        greedy_ok.setdefault(s.utt_id, False)
        if s.candidate.greedy:
            greedy_ok[s.utt_id] = right
        scope = accepted.get((s.utt_id, s.index))
        if scope == "intent":
            intent_only[s.utt_id] = intent_only.get(s.utt_id, True) and f is not None and f.intent == intent
        elif scope is not None:                   # several kept: the utterance teaches right only if all are
            kept_ok[s.utt_id] = kept_ok.get(s.utt_id, True) and right
    names = {(False, True): "corrected", (True, False): "corrupted", (True, True): "confirmed",
             (False, False): "confirmed_errors"}
    table: dict[str, dict[str, int]] = {}
    for uid, g in greedy_ok.items():
        row = table.setdefault(parts.get(uid, "unknown"), dict.fromkeys(
            [*names.values(), "abstained_greedy_wrong", "abstained_greedy_right", "intent_only_right",
             "intent_only_wrong"], 0))
        if uid in kept_ok:
            key = names[(g, kept_ok[uid])]
        elif uid in intent_only:
            key = f"intent_only_{'right' if intent_only[uid] else 'wrong'}"
        else:
            key = f"abstained_greedy_{'right' if g else 'wrong'}"
        row[key] += 1
    return dict(sorted(table.items()))


def round_diagnostics(scored, decisions, gold: dict[str, tuple[str, dict]], parts: dict[str, str] | None = None
                      ) -> dict:
    """``scored``/``decisions``: flat lists (any order); ``gold``: utt_id -> (intent, slots); ``parts``:
    utt_id -> phrasing part (manifest ``meta.part``)."""
    accepted = {(d.utt_id, d.index) for d in decisions if d.accepted}
    by_utt = _by_utterance(scored, gold)
    out: dict = {"utterances": len(by_utt), "candidates": sum(len(v) for v in by_utt.values())}
    for level in ("intent", "frame"):
        prefix = "" if level == "intent" else "frame_"
        covered = greedy_ok = picks = mixed = greedy_mixed_ok = 0
        auc_num = auc_den = 0.0
        kept = kept_ok = kept_greedy = kept_greedy_ok = 0
        for uid, group in by_utt.items():
            intent, slots = gold[uid]

            def ok(s) -> bool:
                f = s.candidate.frame
                return f is not None and f.intent == intent and (level == "intent" or dict(f.slots) == dict(slots))

            flags = [ok(s) for s in group]
            covered += any(flags)
            greedy_ok += any(f for s, f in zip(group, flags) if s.candidate.greedy)
            rewards = [float(s.reward) for s in group]
            if any(flags) and not all(flags):
                mixed += 1
                top = max(range(len(group)), key=lambda i: rewards[i])
                picks += flags[top]
                greedy_mixed_ok += any(f for s, f in zip(group, flags) if s.candidate.greedy)
                num, den = _pairs_auc([r for r, f in zip(rewards, flags) if f],
                                      [r for r, f in zip(rewards, flags) if not f])
                auc_num, auc_den = auc_num + num, auc_den + den
            for s, f in zip(group, flags):
                if (s.utt_id, s.index) in accepted:
                    kept += 1
                    kept_ok += f
                    if s.candidate.greedy:
                        kept_greedy += 1
                        kept_greedy_ok += f
        n = max(len(by_utt), 1)
        out.update({
            f"{prefix}oracle_coverage": covered / n,
            f"{prefix}greedy_accuracy": greedy_ok / n,
            f"{prefix}mixed_utterances": mixed,
            f"{prefix}pick_accuracy": picks / mixed if mixed else None,
            f"{prefix}greedy_accuracy_mixed": greedy_mixed_ok / mixed if mixed else None,
            f"{prefix}reward_auc": auc_num / auc_den if auc_den else None,
            f"{prefix}kept_precision": kept_ok / kept if kept else None,
            f"{prefix}kept_precision_greedy": kept_greedy_ok / kept_greedy if kept_greedy else None,
        })
    out["teaches"] = teaching_table(scored, decisions, gold, parts or {})
    out["kept"] = sum(1 for d in decisions if d.accepted)
    out["kept_greedy_share"] = (sum(1 for s in scored if s.candidate.greedy and (s.utt_id, s.index) in accepted)
                                / max(out["kept"], 1))
    return out


def kept_frames(scored, decisions) -> dict[str, object]:
    """utt_id -> the frame an utterance teaches (its first kept candidate's); an utterance that kept
    nothing is absent."""
    accepted = {(d.utt_id, d.index) for d in decisions if d.accepted}
    out: dict[str, object] = {}
    for s in sorted(scored, key=lambda s: (s.utt_id, s.index)):
        if (s.utt_id, s.index) in accepted and s.utt_id not in out:
            out[s.utt_id] = s.candidate.frame
    return out


def _label_stats(frames: dict[str, object], gold: dict[str, tuple[str, dict]], ids: list[str]) -> dict:
    """Over ``ids``: how many carry a label, and the share of those labels with the right intent / frame."""
    labelled = [u for u in ids if u in frames]

    def share(level: str) -> float | None:
        if not labelled:
            return None
        right = 0
        for u in labelled:
            f, (intent, slots) = frames[u], gold[u]
            right += bool(f is not None and f.intent == intent and (level == "intent" or dict(f.slots) == dict(slots)))
        return right / len(labelled)

    return {"n": len(ids), "labelled": len(labelled), "labelled_share": len(labelled) / len(ids) if ids else None,
            "intent_precision": share("intent"), "frame_precision": share("frame")}


def kept_by(frames: dict[str, object], gold: dict[str, tuple[str, dict]], groups: dict[str, str]) -> dict:
    """{group: label stats} for the utterances with a gold label, grouped by ``groups`` (utt_id -> e.g. the
    recording condition or the TTS engine)."""
    by: dict[str, list[str]] = {}
    for u in gold:
        by.setdefault(groups.get(u, "unknown"), []).append(u)
    return {g: _label_stats(frames, gold, ids) for g, ids in sorted(by.items())}


def against(frames: dict[str, object], other: dict[str, object], gold: dict[str, tuple[str, dict]]) -> dict:
    """Two rounds' labels on the same pool: on the utterances the first kept, both rounds' label stats;
    on the ones it left out, the other round's (what abstaining gave up)."""
    ids = sorted(gold)
    kept = [u for u in ids if u in frames]
    left_out = [u for u in ids if u not in frames]
    return {"kept": {"this": _label_stats(frames, gold, kept), "other": _label_stats(other, gold, kept)},
            "left_out": {"other": _label_stats(other, gold, left_out)},
            "all": {"this": _label_stats(frames, gold, ids), "other": _label_stats(other, gold, ids)}}


def confidence_curve(scored, gold: dict[str, tuple[str, dict]], shares: list[float], rule: str = "best_of_n",
                     params: dict | None = None) -> list[dict]:
    """Per share of the pool kept by the curriculum's confidence ranking (no bars): how many clips carry a
    label and how right those labels are. Precision that falls as the share grows says the ranking works;
    where it drops below what training tolerates is the share (or the weight) to pick."""
    from assistant.rsft.accept import accept_all
    from assistant.rsft.types import group_by_utterance

    ids = list(dict.fromkeys(s.utt_id for s in scored if s.utt_id in gold))
    groups = group_by_utterance([s for s in scored if s.utt_id in gold], ids)
    params = {"k": 1} if params is None else params
    out = []
    for share in shares:
        decisions = accept_all(groups, rule, params, keep_fraction=float(share))
        stats = _label_stats(kept_frames([s for g in groups for s in g], [d for ds in decisions for d in ds]),
                             gold, ids)
        out.append({"share": float(share), **stats})
    return out


def plot_confidence_curve(curve: list[dict], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    xs = [c["labelled_share"] for c in curve]
    for key, label in (("intent_precision", "intent right"), ("frame_precision", "frame right")):
        ax.plot(xs, [c[key] for c in curve], "o-", label=label)
    ax.set(xlabel="share of the pool kept (surest first)", ylabel="precision of the kept labels (oracle)",
           title="confidence ranking: precision vs coverage", ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def _round_rule(round_dir: Path) -> tuple[str, dict]:
    """The acceptance rule and its parameters the round's run used (its config.yaml), else best-of-1."""
    from assistant.config import load_config

    saved = round_dir.parent / "config.yaml"
    if not saved.is_file():
        return "best_of_n", {"k": 1}
    from assistant.rsft.loop import RSFTConfig

    accept = load_config(RSFTConfig, saved).accept
    return accept.rule, accept.rule_params()


def compare_rewards(scored, gold: dict[str, tuple[str, dict]], parts: dict[str, str] | None = None,
                    extra: dict[str, dict[tuple[str, int], float]] | None = None) -> dict:
    """Each reward alone on the same candidates (frame correctness: intent + slots exact): within-utterance
    AUC, ``pick_accuracy`` on utterances with right and wrong candidates, and ``top_precision`` — the share
    of utterances whose top candidate by this reward is right (best-of-N's kept precision, no abstention) —
    overall and per phrasing part. ``extra``: reward name -> {(utt_id, index): value} computed elsewhere."""
    from dataclasses import replace

    names = sorted({k for s in scored for k in s.rewards}) + ["total"] + sorted(extra or {})
    by_utt = _by_utterance(scored, gold)
    out = {}
    for name in names:
        def value(s):
            if name == "total":
                return s.reward
            return extra[name][(s.utt_id, s.index)] if extra and name in extra else s.rewards[name]

        rescored = [replace(s, reward=float(value(s))) for group in by_utt.values() for s in group]
        diag = round_diagnostics(rescored, [], gold, parts)
        out[name] = {"frame_reward_auc": diag["frame_reward_auc"], "frame_pick_accuracy": diag["frame_pick_accuracy"],
                     **_top_precision(by_utt, value, gold, parts)}
    return out


def _by_utterance(scored, gold) -> dict[str, list]:
    """The scored candidates of each utterance that has a gold label, in order."""
    by_utt: dict[str, list] = {}
    for s in scored:
        if s.utt_id in gold:
            by_utt.setdefault(s.utt_id, []).append(s)
    return by_utt


def _frame_right(frame, gold_frame: tuple[str, dict]) -> bool:
    """The frame has the gold intent and exactly the gold slots."""
    intent, slots = gold_frame
    return frame is not None and frame.intent == intent and dict(frame.slots) == dict(slots)


def _top_precision(by_utt: dict[str, list], value, gold, parts) -> dict:
    """Share of utterances whose top candidate by ``value`` has the gold frame (ties: greedy first),
    overall and per phrasing part: best-of-N's kept precision with no abstention."""
    top: dict[str, list[int]] = {}
    for uid, group in by_utt.items():
        intent, slots = gold[uid]
        best = max(group, key=lambda s: (value(s), s.candidate.greedy, -s.index))
        f = best.candidate.frame
        cell = top.setdefault((parts or {}).get(uid, "unknown"), [0, 0])
        cell[0] += 1
        cell[1] += _frame_right(f, (intent, slots))
    n, right = sum(c[0] for c in top.values()), sum(c[1] for c in top.values())
    return {"top_precision": right / max(n, 1),
            "top_precision_by_part": {p: c[1] / c[0] for p, c in sorted(top.items())}}


MISS_KINDS = ("top_right", "right_same_transcript", "right_other_transcript", "none_right")


def _frame_key(frame) -> tuple | None:
    return None if frame is None else (frame.intent, tuple(sorted(dict(frame.slots).items())))


def pick_misses(scored, gold: dict[str, tuple[str, dict]], groups: dict[str, str] | None = None,
                max_rank: int = 3) -> dict:
    """Where the top-reward pick goes wrong (``MISS_KINDS``), overall and per group (e.g. "field/room"),
    and the rank of the gold frame among each utterance's distinct frames ordered by their best reward
    (``rank_coverage[k]``: share of utterances whose gold frame is among the top k; ``any``: the oracle)."""
    by_utt = _by_utterance(scored, gold)
    counts: dict[str, dict[str, int]] = {}
    ranks = [0] * max_rank
    for uid, group in by_utt.items():
        top = max(group, key=lambda s: (s.reward, s.candidate.greedy, -s.index))
        right = [s for s in group if _frame_right(s.candidate.frame, gold[uid])]
        if _frame_right(top.candidate.frame, gold[uid]):
            kind = "top_right"
        elif not right:
            kind = "none_right"
        else:
            heard = top.candidate.frame.transcript if top.candidate.frame is not None else None
            same = any(s.candidate.frame.transcript == heard for s in right)
            kind = "right_same_transcript" if same else "right_other_transcript"
        for name in ("all", (groups or {}).get(uid, "unknown")):
            cell = counts.setdefault(name, dict.fromkeys(MISS_KINDS, 0))
            cell[kind] += 1
        best: dict[tuple, float] = {}
        for s in group:
            key = _frame_key(s.candidate.frame)
            if key is not None:
                best[key] = max(best.get(key, -np.inf), s.reward)
        order = sorted(best, key=lambda k: -best[k])
        gold_key = (gold[uid][0], tuple(sorted(dict(gold[uid][1]).items())))
        if gold_key in order:
            for k in range(order.index(gold_key), max_rank):
                ranks[k] += 1
    n = len(by_utt)
    oracle = sum(c for name, cell in counts.items() if name == "all"
                 for kind, c in cell.items() if kind != "none_right")
    return {"utterances": n, "counts": counts,
            "shares": {name: {k: v / sum(cell.values()) for k, v in cell.items()} for name, cell in counts.items()},
            "rank_coverage": {**{str(k + 1): r / max(n, 1) for k, r in enumerate(ranks)}, "any": oracle / max(n, 1)}}


def weight_grid(scored, gold: dict[str, tuple[str, dict]], grid: dict[str, list[float]],
                parts: dict[str, str] | None = None, best: int = 5) -> dict:
    """Could another weighting of the round's *stored* rewards pick better? Every combination of ``grid``
    (reward name -> weights, the ``rsft.rewards`` weights a config would set) ranks each utterance's
    candidates by the weighted sum; each is scored by ``top_precision`` against the gold frames (tuned on
    the pool's hidden labels, so the best row is an optimistic bound for label-free weights). Reported with
    the round's own total and the oracle (some candidate right), the ceiling of any choice."""
    import itertools

    missing = sorted(set(grid) - {k for s in scored for k in s.rewards})
    if missing:
        raise ConfigError(f"--grid names reward(s) {missing} that scored.jsonl does not hold "
                         f"(it has {sorted({k for s in scored for k in s.rewards})})")
    by_utt = _by_utterance(scored, gold)

    def right(s) -> float:
        return float(_frame_right(s.candidate.frame, gold[s.utt_id]))

    rows = []
    names = sorted(grid)
    for weights in itertools.product(*(grid[n] for n in names)):
        w = dict(zip(names, weights))
        rows.append({"weights": w, **_top_precision(by_utt, lambda s: sum(w[n] * s.rewards[n] for n in names),
                                                   gold, parts)})
    rows.sort(key=lambda r: -r["top_precision"])
    return {"combinations": len(rows), "round_total": _top_precision(by_utt, lambda s: s.reward, gold, parts),
            "oracle": _top_precision(by_utt, right, gold, parts), "best": rows[:best]}


def _round_files(round_dir: str | Path) -> tuple[list, list]:
    from assistant.rsft.types import Decision, Scored, read_records

    round_dir = Path(round_dir)
    return read_records(round_dir / "scored.jsonl", Scored), read_records(round_dir / "decisions.jsonl", Decision)


def diagnose_round_dir(round_dir: str | Path, pool_manifest: str | Path, other_round: str | Path | None = None
                       ) -> dict:
    """Diagnostics of one persisted round folder against the pool manifest's (hidden) labels; with
    ``other_round``, also its labels next to that round's (``against``) and both by condition and engine."""
    from assistant.data.manifest import read_manifest

    pool = read_manifest(pool_manifest)
    gold = {u.id: (u.intent, dict(u.slots)) for u in pool}
    scored, decisions = _round_files(round_dir)
    out = round_diagnostics(scored, decisions, gold, {u.id: str(u.meta.get("part", "unknown")) for u in pool})
    frames = kept_frames(scored, decisions)
    out["kept_by"] = {key: kept_by(frames, gold, {u.id: str(u.meta.get(key, "unknown")) for u in pool})
                      for key in ("condition", "engine", "part")}
    targets = target_transcripts(Path(round_dir) / "kept.jsonl", scored, {u.id: u.text for u in pool})
    if targets is not None:
        out["targets"] = targets
    if other_round is not None:
        other = kept_frames(*_round_files(other_round))
        out["against"] = {"other_round": str(other_round), **against(frames, other, gold),
                          "other_kept_by": {key: kept_by(other, gold, {u.id: str(u.meta.get(key, "unknown"))
                                                                       for u in pool})
                                            for key in ("condition", "engine", "part")}}
    return out


def _word_edits(a: str, b: str) -> int:
    from assistant.metrics import _edits

    if not a.split() or not b.split():
        return len(a.split()) + len(b.split())
    return _edits(a, b)[0]


def mbr_transcript(candidates, chosen) -> str:
    """Among the transcripts of the candidates that carry the chosen frame, the one with the fewest expected
    word edits to the draws that carry it too (count-weighted): minimum-Bayes-risk over the samples, where
    the majority rule needs whole transcripts to agree. (Draws of other frames would pull towards short
    transcripts, not towards what was said.)"""
    from assistant.text import normalize_text

    key = chosen.frame_key(transcript=False)
    same = [c for c in candidates if c.frame is not None and c.frame_key(transcript=False) == key]
    draws = [(normalize_text(c.frame.transcript), c.count) for c in same if c.source == "sample" and c.count > 0]
    same = [normalize_text(c.frame.transcript) for c in same]
    if not draws:                               # only readings carry the frame: nothing to vote with
        return chosen.frame.transcript
    return min(dict.fromkeys(same), key=lambda t: sum(n * _word_edits(d, t) for d, n in draws))


def target_transcripts(kept_file: Path, scored, gold_text: dict[str, str]) -> dict | None:
    """WER of the round's fine-tuning targets' transcripts against the gold text (the pool clips only:
    the labelled set mixed in is gold already), of the minimum-Bayes-risk transcript of the same frames
    (``mbr_transcript``: what a word-level vote over the samples would teach instead), and of the greedy
    transcripts on the same clips and on the whole pool; None where the round has no kept.jsonl."""
    from assistant.frames import parse_frame
    from assistant.metrics import wer

    if not kept_file.is_file():
        return None
    by_utt: dict[str, list] = {}
    for s in scored:
        by_utt.setdefault(s.candidate.utt_id, []).append(s.candidate)
    targets: dict[str, str] = {}
    mbr: dict[str, str] = {}
    for line in kept_file.read_text().splitlines():
        rec = json.loads(line)
        uid, _, index = str(rec["id"]).partition("#")
        frame = parse_frame(rec["target"]).frame
        if uid in gold_text and frame is not None and uid not in targets:   # k = 1: one per clip; else its first
            targets[uid] = frame.transcript
            chosen = next((c for c in by_utt.get(uid, []) if str(c.index) == index and c.frame is not None), None)
            mbr[uid] = mbr_transcript(by_utt[uid], chosen) if chosen is not None else frame.transcript
    greedy = {c.utt_id: c.frame.transcript for cands in by_utt.values() for c in cands
              if c.greedy and c.source == "sample" and c.frame is not None and c.utt_id in gold_text}
    ids = sorted(targets)
    refs = [gold_text[i] for i in ids]
    return {"n_clips": len(ids), "target_wer": wer(refs, [targets[i] for i in ids]),
            "mbr_target_wer": wer(refs, [mbr[i] for i in ids]),
            "greedy_wer_same_clips": wer(refs, [greedy.get(i) for i in ids]),
            "greedy_wer_pool": wer([gold_text[i] for i in gold_text], [greedy.get(i) for i in gold_text])}


def curve_round_dir(round_dir: str | Path, pool_manifest: str | Path, shares: list[float],
                    plot: str | None = None) -> dict:
    """``confidence_curve`` of a persisted round with the rule its run used (``plot``: a PNG of it)."""
    from assistant.data.manifest import read_manifest
    from assistant.rsft.types import Scored, read_records

    gold = {u.id: (u.intent, dict(u.slots)) for u in read_manifest(pool_manifest)}
    rule, params = _round_rule(Path(round_dir))
    curve = confidence_curve(read_records(Path(round_dir) / "scored.jsonl", Scored), gold, shares, rule, params)
    if plot:
        plot_confidence_curve(curve, plot)
    return {"rule": rule, "params": params, "confidence_curve": curve, **({"plot": plot} if plot else {})}


def compare_round_dir(round_dir: str | Path, pool_manifest: str | Path, fresh: list[str],
                      target_model: str = "base", limit: int | None = None) -> dict:
    """``compare_rewards`` on a persisted round; ``fresh``: rewards to compute now (``target_likelihood``);
    ``limit``: only the first this many utterances of the round (None: all)."""
    from assistant.data.manifest import read_manifest
    from assistant.rsft.rewards import build_reward_fns
    from assistant.rsft.types import Scored, group_by_utterance, read_records

    pool = read_manifest(pool_manifest)
    gold = {u.id: (u.intent, dict(u.slots)) for u in pool}
    scored = read_records(Path(round_dir) / "scored.jsonl", Scored)
    if limit is not None:
        keep = set(list(dict.fromkeys(s.utt_id for s in scored))[:limit])
        scored = [s for s in scored if s.utt_id in keep]
    extra = {}
    if fresh:
        resources = {}
        if "target_likelihood" in fresh:
            from assistant.rsft.target_likelihood import load_target_model

            resources["target_model"] = load_target_model(target_model)
        fns = build_reward_fns(dict.fromkeys(fresh, 1.0), **resources)
        seen = {s.utt_id for s in scored}
        utts = [u for u in pool if u.id in seen]
        cands = group_by_utterance([s.candidate for s in scored], [u.id for u in utts])
        for name, fn in fns.fns.items():
            values = _in_batches(fn, utts, cands, desc=f"score: {name}")
            extra[name] = {(c.utt_id, c.index): v for cs, vs in zip(cands, values) for c, v in zip(cs, vs)}
    return compare_rewards(scored, gold, {u.id: str(u.meta.get("part", "unknown")) for u in pool}, extra)


def parse_grid(text: str) -> dict[str, list[float]]:
    """'agreement=0,0.5,1;vote=0,1' -> {"agreement": [0.0, 0.5, 1.0], "vote": [0.0, 1.0]}."""
    grid = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, sep, values = part.partition("=")
        try:
            grid[name.strip()] = [float(v) for v in values.split(",")]
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise ValueError(f"--grid: {part!r} is not NAME=w1,w2,... (e.g. 'agreement=0,0.5,1;vote=0,1,2')")
    if not grid:
        raise ValueError("--grid: no reward named (e.g. 'agreement=0,0.5,1;vote=0,1,2')")
    return grid


def grid_round_dir(round_dir: str | Path, pool_manifest: str | Path, grid: dict[str, list[float]]) -> dict:
    """``weight_grid`` on a persisted round folder against the pool manifest's hidden labels."""
    from assistant.data.manifest import read_manifest
    from assistant.rsft.types import Scored, read_records

    pool = read_manifest(pool_manifest)
    gold = {u.id: (u.intent, dict(u.slots)) for u in pool}
    scored = read_records(Path(round_dir) / "scored.jsonl", Scored)
    return weight_grid(scored, gold, grid, {u.id: str(u.meta.get("part", "unknown")) for u in pool})


def misses_round_dir(round_dir: str | Path, pool_manifest: str | Path) -> dict:
    """``pick_misses`` of a persisted round, grouped by phrasing part / recording condition."""
    from assistant.data.manifest import read_manifest
    from assistant.rsft.types import Scored, read_records

    pool = read_manifest(pool_manifest)
    gold = {u.id: (u.intent, dict(u.slots)) for u in pool}
    groups = {u.id: f"{u.meta.get('part', 'unknown')}/{u.meta.get('condition', 'unknown')}" for u in pool}
    return pick_misses(read_records(Path(round_dir) / "scored.jsonl", Scored), gold, groups)


def _in_batches(fn, utts, cands, desc: str, batch: int = 32) -> list[list[float]]:
    from tqdm import tqdm

    out: list[list[float]] = []
    for start in tqdm(range(0, len(utts), batch), desc=desc, unit="batch", disable=None):
        out += fn(utts[start:start + batch], cands[start:start + batch])
    return out


@dataclass
class DiagnosticsConfig:
    round_dir: str | None = field(default=None, metadata={"help": "a persisted RSFT round folder (first "
                                                                  "positional argument)"})
    pool_manifest: str | None = field(default=None, metadata={"help": "the pool manifest with its hidden labels "
                                                                      "(second positional argument)"})
    compare: list[str] | None = field(default=None, metadata={
        "help": "rank candidates by each reward alone; the rewards named here (comma-separated) are computed "
                "afresh; --compare alone: only the ones in scored.jsonl"})
    target_model: str = field(default="base", metadata={"help": "target_likelihood's stock Whisper"})
    limit: int | None = field(default=None, metadata={"help": "--compare: the round's first N utterances (none: all)"})
    against: str | None = field(default=None, metadata={
        "help": "another round folder on the same pool (e.g. pseudo-labels on every clip): both rounds' label "
                "precision on the clips this one kept and left out, and by condition / engine"})
    shares: list[float] | None = field(default=None, metadata={
        "help": "replay the round's rule with these curriculum shares (comma-separated, in (0, 1]) instead of its "
                "bars: each share's label precision"})
    plot: str | None = field(default=None, metadata={"help": "--shares: write the precision / coverage curve "
                                                             "to this PNG"})
    grid: str | None = field(default=None, metadata={
        "help": "weights to try for the round's stored rewards, e.g. 'agreement=0,0.5,1;vote=0,1,2': the "
                "best weightings' top-candidate precision against the round's total and the oracle"})
    misses: bool = field(default=False, metadata={
        "help": "where the round's pick goes wrong, per part / condition: top right, a right frame with the "
                "top's transcript or with another one, or none right; and the gold frame's rank"})

    def validate(self) -> None:
        if not self.round_dir or not self.pool_manifest:
            raise ValueError("pass ROUND_DIR POOL_MANIFEST, e.g. `python -m assistant.rsft.diagnostics "
                             "runs/main/rsft/round_1 data/generated/default/pool.jsonl`")
        if sum(x is not None for x in (self.against, self.compare, self.shares, self.grid)) + self.misses > 1:
            raise ValueError("--against, --compare, --shares, --grid and --misses answer different questions: "
                             "pass one of them")
        if self.grid is not None:
            parse_grid(self.grid)
        if self.shares is not None and (not self.shares or any(not 0.0 < x <= 1.0 for x in self.shares)):
            raise ValueError(f"--shares takes shares of the pool in (0, 1], e.g. 0.5,0.7,1; got {self.shares}")
        if self.plot is not None and self.shares is None:
            raise ValueError("--plot draws the --shares curve: pass --shares too")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {self.limit} (leave it out for every utterance)")


def main(argv: list[str]) -> int:
    prog = "python -m assistant.rsft.diagnostics"

    def work() -> None:
        cfg = parse_command(DiagnosticsConfig, prog, __doc__, argv, positional=("round_dir", "pool_manifest"))
        if cfg.shares is not None:
            out = curve_round_dir(cfg.round_dir, cfg.pool_manifest, cfg.shares, cfg.plot)
        elif cfg.misses:
            out = misses_round_dir(cfg.round_dir, cfg.pool_manifest)
        elif cfg.grid is not None:
            out = grid_round_dir(cfg.round_dir, cfg.pool_manifest, parse_grid(cfg.grid))
        elif cfg.compare is None:
            out = diagnose_round_dir(cfg.round_dir, cfg.pool_manifest, cfg.against)
        else:
            out = compare_round_dir(cfg.round_dir, cfg.pool_manifest, cfg.compare, cfg.target_model, cfg.limit)
        print(json.dumps(out, indent=1))

    return run_command(prog, work, (ConfigError,))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
