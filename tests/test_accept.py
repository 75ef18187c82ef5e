"""Acceptance rules: the statistical rule's output distribution (chi-square), edge cases of every rule."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import chisquare

from assistant.rsft.accept import (RULES, AcceptError, accept, accept_all, acceptance_report, best_of_n,
                                   distinct_correct, statistical, threshold)
from assistant.rsft.types import Candidate, Scored


def scored_list(utt_id: str, rewards, logprobs=None, texts=None) -> list[Scored]:
    logprobs = logprobs if logprobs is not None else [-1.0] * len(rewards)
    texts = texts if texts is not None else [f"stop timer {i} | timer_remove |" for i in range(len(rewards))]
    return [Scored(Candidate(utt_id, i, texts[i], [1, 2], logprob=lp), {"r": float(r)}, float(r))
            for i, (r, lp) in enumerate(zip(rewards, logprobs))]


def kept(decisions) -> list[int]:
    return [d.index for d in decisions if d.accepted]


# --------------------------------------------------------------------------- statistical: distribution

Q = np.array([0.4, 0.3, 0.15, 0.1, 0.05])   # the proposal (the policy's sampling distribution)
R = np.array([0.0, 1.0, 2.0, 0.5, 3.0])     # reward of each outcome
BETA = 1.0
DRAWS = 20_000


def tilted(q, r, beta):
    p = q * np.exp(r / beta)
    return p / p.sum()


def run_statistical(n_candidates: int, bound: float | None, seed: int = 1234) -> tuple[np.ndarray, int]:
    """DRAWS utterances, each with n_candidates i.i.d. outcomes from Q.
    Returns (accepted count per outcome, number of draws that kept nothing)."""
    rng = np.random.default_rng(seed)
    counts = np.zeros(len(Q), dtype=int)
    empty = 0
    outcomes = rng.choice(len(Q), size=(DRAWS, n_candidates), p=Q)
    for d in range(DRAWS):
        ys = outcomes[d]
        decisions = statistical(scored_list(f"u{d}", R[ys]), rng, beta=BETA, k=1, bound=bound)
        accepted = kept(decisions)
        assert len(accepted) <= 1
        if accepted:
            counts[ys[accepted[0]]] += 1
        else:
            empty += 1
    return counts, empty


def test_statistical_with_known_bound_samples_the_tilted_target_exactly():
    counts, empty = run_statistical(n_candidates=8, bound=float(R.max()))
    n = counts.sum()
    target = tilted(Q, R, BETA)
    p_target = chisquare(counts, target * n).pvalue
    print(f"known bound, N=8: n={n} observed={np.round(counts / n, 4)} target={np.round(target, 4)} p={p_target:.3g}")
    assert p_target > 1e-3
    # The same test rejects wrong targets: the proposal itself, and a different temperature.
    assert chisquare(counts, Q * n).pvalue < 1e-6
    assert chisquare(counts, tilted(Q, R, 2.0) * n).pvalue < 1e-6
    # Exactness costs: a draw keeps nothing when every candidate fails its coin.
    accept_prob = float(np.sum(Q * np.exp((R - R.max()) / BETA)))
    assert abs(empty / DRAWS - (1 - accept_prob) ** 8) < 0.015


def test_statistical_with_per_utterance_max_converges_with_many_candidates():
    counts, empty = run_statistical(n_candidates=32, bound=None)
    assert empty == 0                  # the best candidate is always accepted when reached
    target = tilted(Q, R, BETA)
    p = chisquare(counts, target * DRAWS).pvalue
    print(f"per-utterance max, N=32: observed={np.round(counts / DRAWS, 4)} p={p:.3g}")
    assert p > 1e-3
    assert chisquare(counts, Q * DRAWS).pvalue < 1e-6


def test_statistical_with_per_utterance_max_is_biased_with_few_candidates():
    """RSO's empirical M with 4 candidates: each sample's best is over-kept, so the rare best
    outcome (reward 3) is kept far less often than the target says (documented limitation)."""
    counts, empty = run_statistical(n_candidates=4, bound=None)
    target = tilted(Q, R, BETA)
    p = chisquare(counts, target * DRAWS).pvalue
    print(f"per-utterance max, N=4: observed={np.round(counts / DRAWS, 4)} p={p:.3g}")
    assert empty == 0
    assert p < 1e-6
    assert counts[4] / DRAWS < 0.75 * target[4]


def dedup(outcomes: np.ndarray, utt_id: str, ref_lp=None, own_lp=None) -> list[Scored]:
    """What the sampler hands on: one candidate per distinct outcome, its repeats as ``count``."""
    values, counts = np.unique(outcomes, return_counts=True)
    return [Scored(Candidate(utt_id, j, f"stop timer {v} | timer_remove |", [1, 2],
                             logprob=-1.0 if own_lp is None else float(own_lp[v]),
                             ref_logprob=None if ref_lp is None else float(ref_lp[v]), count=int(c)),
                   {"r": float(R[v])}, float(R[v]))
            for j, (v, c) in enumerate(zip(values, counts))]


def run_deduplicated(n_draws: int, q=Q, ref_lp=None, own_lp=None, seed: int = 99) -> np.ndarray:
    rng = np.random.default_rng(seed)
    bound = float(R.max()) if ref_lp is None else float(np.max(R + BETA * (ref_lp - own_lp)))
    counts = np.zeros(len(Q), dtype=int)
    outcomes = rng.choice(len(Q), size=(DRAWS, n_draws), p=q)
    for d in range(DRAWS):
        scored = dedup(outcomes[d], f"u{d}", ref_lp, own_lp)
        accepted = kept(statistical(scored, rng, beta=BETA, k=1, bound=bound))
        assert len(accepted) <= 1
        if accepted:
            counts[int(scored[accepted[0]].candidate.text.split()[2])] += 1
    return counts


def test_statistical_is_exact_through_the_samplers_deduplication():
    """8 draws merged into distinct candidates with counts: still the tilted target; ignoring the counts
    (every distinct candidate one draw) is measurably wrong."""
    counts = run_deduplicated(8)
    n = counts.sum()
    assert chisquare(counts, tilted(Q, R, BETA) * n).pvalue > 1e-3
    rng = np.random.default_rng(5)
    flat = np.zeros(len(Q), dtype=int)
    for d, ys in enumerate(rng.choice(len(Q), size=(DRAWS, 8), p=Q)):
        scored = [Scored(s.candidate.__class__(**{**s.candidate.__dict__, "count": 1}), s.rewards, s.reward)
                  for s in dedup(ys, f"u{d}")]
        for i in kept(statistical(scored, rng, beta=BETA, k=1, bound=float(R.max()))):
            flat[int(scored[i].candidate.text.split()[2])] += 1
    assert chisquare(flat, tilted(Q, R, BETA) * flat.sum()).pvalue < 1e-6


def test_statistical_corrects_a_drifted_proposal_back_to_the_reference_target():
    """Round 2 samples from the fine-tuned policy pi_k, not pi_ref: with the stored reference log-probs
    the kept set still follows pi_ref * exp(r / beta)."""
    policy = np.array([0.1, 0.2, 0.2, 0.2, 0.3])
    counts = run_deduplicated(8, q=policy, ref_lp=np.log(Q), own_lp=np.log(policy))
    n = counts.sum()
    assert chisquare(counts, tilted(Q, R, BETA) * n).pvalue > 1e-3
    assert chisquare(counts, tilted(policy, R, BETA) * n).pvalue < 1e-6


def test_abstention_drops_utterances_whose_vote_is_split():
    texts = ["stop timer | timer_remove |", "stop timer | timer_remove |", "set a timer | timer_set |"]
    scored = [Scored(Candidate("a", i, t, [1], count=c), {"r": r}, r)
              for i, (t, c, r) in enumerate(zip(texts, (3, 2, 5), (0.1, 0.2, 0.9)))]
    # best reward: the timer_set frame, which won 5 of 10 draws; timer_remove won 5 too (two transcripts)
    (kept_alone,) = [kept(d) for d in accept_all([scored], "best_of_n", {"k": 1})]
    assert kept_alone == [2]
    assert [kept(d) for d in accept_all([scored], "best_of_n", {"k": 1}, min_vote=0.5)] == [[2]]
    decisions = accept_all([scored], "best_of_n", {"k": 1}, min_vote=0.6)[0]
    assert kept(decisions) == [] and decisions[2].reason == "abstain: vote share 0.50 < 0.6"
    assert accept_all([[]], "best_of_n", {"k": 1}, min_vote=0.9) == [[]]
    with pytest.raises(AcceptError, match="min_vote"):
        accept_all([scored], "best_of_n", {"k": 1}, min_vote=1.5)


def test_statistical_never_keeps_a_greedy_only_candidate_and_normalizes_on_request():
    scored = [Scored(Candidate("a", 0, "stop timer | timer_remove |", [1], greedy=True, count=0), {"r": 9.0}, 9.0),
              Scored(Candidate("a", 1, "set a timer | timer_set |", [1], count=4), {"r": 0.0}, 0.0)]
    decisions = statistical(scored, np.random.default_rng(0), beta=0.1, k=2)
    assert kept(decisions) == [1] and decisions[0].reason == "statistical: not a sample (greedy row only)"
    big = scored_list("b", [0.0, 100.0, 200.0])
    small = scored_list("b", [0.0, 1.0, 2.0])
    pick = lambda lst: [kept(statistical(lst, np.random.default_rng(s), beta=1.0, normalize=True)) for s in range(50)]
    assert pick(big) == pick(small)                       # per-utterance scale: beta means the same
    with pytest.raises(AcceptError, match="bound"):
        statistical(small, np.random.default_rng(0), beta=1.0, normalize=True, bound=2.0)


# --------------------------------------------------------------------------- statistical: edge cases


def test_statistical_edge_cases():
    rng = np.random.default_rng(0)
    assert statistical([], rng, beta=1.0) == []
    (only,) = statistical(scored_list("a", [0.3]), rng, beta=0.5)
    assert only.accepted and only.reason == "statistical: accepted"
    # All rewards equal: every coin succeeds, so exactly min(k, n) are kept, in random order.
    decisions = statistical(scored_list("a", [0.7] * 6), rng, beta=0.1, k=4)
    assert len(decisions) == 6 and len(kept(decisions)) == 4
    assert sum(d.reason == "statistical: not drawn (k reached)" for d in decisions) == 2
    assert len(kept(statistical(scored_list("a", [0.7] * 6), rng, beta=0.1, k=4, cap=2))) == 2
    assert len(kept(statistical(scored_list("a", [0.7] * 3), rng, beta=0.1, k=10))) == 3
    # A tiny beta keeps only the best; decisions come back in candidate order.
    decisions = statistical(scored_list("a", [0.1, 0.9, 0.5]), rng, beta=1e-3, k=3)
    assert [d.index for d in decisions] == [0, 1, 2] and kept(decisions) == [1]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_every_rule_rejects_non_finite_rewards_naming_the_utterance(bad):
    rng = np.random.default_rng(0)
    params = {"statistical": {"beta": 1.0}, "best_of_n": {}, "threshold": {"tau": 0.5},
              "distinct_correct": {"bar": 0.5}}
    for name, rule in RULES.items():
        with pytest.raises(ValueError, match=r"utt-7.*candidate 1"):
            rule(scored_list("utt-7", [0.1, bad]), rng, **params[name])


@pytest.mark.parametrize("beta", [0.0, -1.0, math.nan])
def test_statistical_rejects_bad_beta(beta):
    with pytest.raises(AcceptError, match="beta"):
        statistical(scored_list("a", [0.1]), np.random.default_rng(0), beta=beta)


def test_statistical_rejects_rewards_above_the_bound_and_bad_k():
    rng = np.random.default_rng(0)
    with pytest.raises(AcceptError, match="above bound"):
        statistical(scored_list("a", [0.1, 1.5]), rng, beta=1.0, bound=1.0)
    for k in (0, -1, 1.5, True):
        with pytest.raises(AcceptError, match="k must be"):
            statistical(scored_list("a", [0.1]), rng, beta=1.0, k=k)


def test_rules_refuse_mixed_utterances_and_repeated_indices():
    rng = np.random.default_rng(0)
    mixed = scored_list("a", [0.1]) + scored_list("b", [0.2])
    with pytest.raises(AcceptError, match="ONE utterance"):
        best_of_n(mixed, rng)
    twice = scored_list("a", [0.1]) + scored_list("a", [0.2])
    with pytest.raises(AcceptError, match="index 0 twice"):
        threshold(twice, rng, tau=0.0)


# --------------------------------------------------------------------------- deterministic rules


def test_best_of_n_breaks_ties_by_logprob_then_index():
    rng = np.random.default_rng(0)
    scored = scored_list("a", [0.5, 0.9, 0.9, 0.9, 0.2], logprobs=[-1.0, -3.0, -2.0, -2.0, -0.1])
    assert kept(best_of_n(scored, rng, k=1)) == [2]
    assert kept(best_of_n(scored, rng, k=2)) == [2, 3]
    assert kept(best_of_n(scored, rng, k=3)) == [1, 2, 3]
    assert kept(best_of_n(scored, rng, k=99)) == [0, 1, 2, 3, 4]
    assert best_of_n([], rng, k=2) == []
    assert kept(best_of_n(scored_list("a", [0.4]), rng)) == [0]
    # All rewards and log-probs equal: the lowest indices.
    assert kept(best_of_n(scored_list("a", [1.0] * 4), rng, k=2)) == [0, 1]
    reasons = {d.reason for d in best_of_n(scored, rng, k=1)}
    assert reasons == {"best_of_n: top-k", "best_of_n: below top-k"}


def test_threshold_keeps_all_above_tau_and_caps_by_best():
    rng = np.random.default_rng(0)
    scored = scored_list("a", [0.2, 0.8, 0.5, 0.95, 0.5])
    assert kept(threshold(scored, rng, tau=0.5)) == [1, 2, 3, 4]
    assert kept(threshold(scored, rng, tau=0.5, cap=2)) == [1, 3]
    assert kept(threshold(scored, rng, tau=0.99)) == []
    assert threshold([], rng, tau=0.0) == []
    assert kept(threshold(scored_list("a", [0.6] * 3), rng, tau=0.6)) == [0, 1, 2]
    reasons = [d.reason for d in threshold(scored, rng, tau=0.5, cap=2)]
    assert reasons == ["threshold: below tau", "threshold: reward >= tau", "threshold: over cap",
                       "threshold: reward >= tau", "threshold: over cap"]


def test_distinct_correct_keeps_the_best_copy_of_each_distinct_frame():
    rng = np.random.default_rng(0)
    texts = ["set a timer for ten minutes | timer_set | duration=ten minutes",
             "Set a timer for ten minutes. | timer_set | duration=ten minutes",   # same after normalising
             "start a timer for ten minutes | timer_set | duration=ten minutes",  # other transcript
             "set a timer for two minutes | timer_set | duration=two minutes",    # below the bar
             "not a frame",
             "not  a FRAME"]                                                     # same unparsed text
    scored = scored_list("a", [0.9, 0.9, 0.8, 0.3, 0.7, 0.7], logprobs=[-2.0, -1.0, -1.0, -1.0, -1.0, -1.0],
                         texts=texts)
    decisions = distinct_correct(scored, rng, bar=0.6)
    assert kept(decisions) == [1, 2, 4]               # index 1 wins its pair on log-prob
    assert decisions[0].reason == "distinct_correct: duplicate"
    assert decisions[3].reason == "distinct_correct: below bar"
    assert decisions[5].reason == "distinct_correct: duplicate"
    assert kept(distinct_correct(scored, rng, bar=0.6, cap=2)) == [1, 2]
    assert distinct_correct([], rng, bar=0.0) == []
    assert kept(distinct_correct(scored_list("a", [0.5]), rng, bar=0.5)) == [0]
    # All equal rewards and identical frames: one survivor.
    same = scored_list("a", [1.0] * 3, texts=[texts[0]] * 3)
    assert kept(distinct_correct(same, rng, bar=1.0)) == [0]


# --------------------------------------------------------------------------- many utterances


def test_accept_all_is_reproducible_per_utterance_and_independent_of_the_batch():
    lists = [scored_list(f"u{i}", np.linspace(0, 1, 8)) for i in range(30)]
    params = {"beta": 0.3, "k": 2}
    first = accept_all(lists, "statistical", params, seed=7)
    again = accept_all(lists, "statistical", params, seed=7)
    assert [[d.accepted for d in ds] for ds in first] == [[d.accepted for d in ds] for ds in again]
    alone = accept_all([lists[5]], "statistical", params, seed=7)
    assert [d.accepted for d in alone[0]] == [d.accepted for d in first[5]]
    other_seed = accept_all(lists, "statistical", params, seed=8)
    assert [[d.accepted for d in ds] for ds in first] != [[d.accepted for d in ds] for ds in other_seed]
    assert accept_all([[], lists[0]], "best_of_n", {"k": 1})[0] == []


def test_accept_all_reports_bad_rules_params_and_groupings():
    lists = [scored_list("a", [0.1, 0.2])]
    with pytest.raises(AcceptError, match="unknown acceptance rule 'best_of'"):
        accept_all(lists, "best_of", {})
    with pytest.raises(AcceptError, match=r"no parameter\(s\) \['tau'\]"):
        accept_all(lists, "best_of_n", {"tau": 0.5})
    with pytest.raises(AcceptError, match=r"needs parameter\(s\) \['tau'\]"):
        accept_all(lists, "threshold", {})
    with pytest.raises(AcceptError, match="seed"):
        accept_all(lists, "best_of_n", {}, seed=-1)
    with pytest.raises(AcceptError, match="appears in two candidate lists"):
        accept_all(lists + [scored_list("a", [0.3])], "best_of_n", {})
    assert kept(accept(lists[0], np.random.default_rng(0), "threshold", tau=0.15)) == [1]


def test_acceptance_report_counts_and_means():
    lists = [scored_list("a", [0.2, 0.8, 0.5]), scored_list("b", [0.1, 0.3]), []]
    decisions = accept_all(lists, "threshold", {"tau": 0.5})
    report = acceptance_report(lists, decisions)
    assert report["n_utterances"] == 3 and report["n_utterances_without_candidates"] == 1
    assert report["n_candidates"] == 5 and report["n_accepted"] == 2
    assert report["acceptance_rate"] == pytest.approx(0.4)
    assert report["mean_reward_all"] == pytest.approx(0.38)
    assert report["mean_reward_kept"] == pytest.approx(0.65)
    assert report["mean_rewards_kept"] == {"r": pytest.approx(0.65)}
    assert report["n_utterances_kept_nothing"] == 1 and report["utterances_kept_nothing"] == ["b"]
    assert report["per_rule"] == {"threshold": {"accepted": 2, "rejected": 3}}
    assert report["reasons"] == {"threshold: below tau": 3, "threshold: reward >= tau": 2}
    assert report["accepted_per_utterance"] == pytest.approx(1.0)
    with pytest.raises(AcceptError, match="no decision for utterance 'a' candidate 0"):
        acceptance_report(lists, [decisions[0][1:], decisions[1], []])
    empty = acceptance_report([], [])
    assert empty["acceptance_rate"] is None and empty["mean_reward_kept"] is None


def test_the_text_model_can_vouch_for_a_frame_the_sampler_never_drew():
    """A reading (count 0, no draws) kept by best_of_n survives abstention only when the text model gives
    it probability >= min_text; without the teacher reward the rule says what to add."""
    texts = ["stop timer | timer_remove |", "stop the timer | timer_remove |", "stop timer | timer_set |"]
    def build(teacher_lp):
        return [Scored(Candidate("a", i, t, [1], count=c, source=src), {"r": r, "teacher": tl}, r)
                for i, (t, c, src, r, tl) in enumerate(zip(texts, (3, 3, 0), ("sample", "sample", "text"),
                                                           (0.1, 0.2, 0.9), (-2.0, -2.0, teacher_lp)))]
    confident, unsure = build(math.log(0.95)), build(math.log(0.5))
    assert kept(accept_all([confident], "best_of_n", {"k": 1}, min_vote=0.5)[0]) == []        # vote share 0
    assert kept(accept_all([confident], "best_of_n", {"k": 1}, min_vote=0.5, min_text=0.9)[0]) == [2]
    decisions = accept_all([unsure], "best_of_n", {"k": 1}, min_vote=0.5, min_text=0.9)[0]
    assert kept(decisions) == [] and decisions[2].reason == "abstain: vote share 0.00 < 0.5, text confidence 0.50 < 0.9"
    no_teacher = [Scored(s.candidate, {"r": s.reward}, s.reward) for s in unsure]
    with pytest.raises(AcceptError, match="teacher: 0.0"):
        accept_all([no_teacher], "best_of_n", {"k": 1}, min_vote=0.5, min_text=0.9)
    with pytest.raises(AcceptError, match="min_text"):
        accept_all([confident], "best_of_n", {"k": 1}, min_vote=0.5, min_text=2.0)


def _voted(utt: str, counts, teacher_lps=None) -> list[Scored]:
    """One utterance whose candidate i (a frame of its own) won counts[i] draws; reward follows the count."""
    teacher_lps = teacher_lps or [-1.0] * len(counts)
    return [Scored(Candidate(utt, i, f"say {i} | intent_{i} |", [1], count=c), {"r": float(c), "teacher": t},
                   float(c)) for i, (c, t) in enumerate(zip(counts, teacher_lps))]


def test_soft_abstention_keeps_the_unsure_frame_at_a_lower_loss_weight():
    split = _voted("a", (5, 5))                    # vote share 0.5: below a 0.6 bar
    hard = accept_all([split], "best_of_n", {"k": 1}, min_vote=0.6)[0]
    soft = accept_all([split], "best_of_n", {"k": 1}, min_vote=0.6, abstain_weight=0.25)[0]
    assert kept(accept_all([split], "best_of_n", {"k": 1})[0]) == [0]       # a tie: the earlier candidate
    assert kept(hard) == [] and kept(soft) == [0]
    (d,) = [d for d in soft if d.accepted]
    assert d.weight == 0.25 and d.reason == "abstain (kept at weight 0.25): vote share 0.50 < 0.6"
    sure = accept_all([_voted("b", (9, 1))], "best_of_n", {"k": 1}, min_vote=0.6, abstain_weight=0.25)[0]
    assert [d.weight for d in sure if d.accepted] == [1.0]
    report = acceptance_report([split, _voted("b", (9, 1))], [soft, sure])
    assert report["n_kept_below_weight_1"] == 1 and report["mean_kept_weight"] == pytest.approx(0.625)
    assert report["abstention_rate"] == 0.5
    with pytest.raises(AcceptError, match="abstain_weight"):
        accept_all([split], "best_of_n", {"k": 1}, abstain_weight=1.5)


def test_intent_scope_keeps_the_unsure_frame_for_its_intent_only():
    """abstain_scope "intent": a left-out clip keeps its frame at abstain_weight, teaching only the intent;
    a sure clip stays whole; the scope survives the decisions file; the curriculum ranks only whole labels."""
    from assistant.rsft.accept import AcceptConfig
    from assistant.rsft.types import Decision

    split, sure = _voted("a", (5, 5)), _voted("b", (9, 1))
    decs = accept_all([split, sure], "best_of_n", {"k": 1}, min_vote=0.6, abstain_weight=1.0,
                      abstain_scope="intent")
    (unsure,) = [d for d in decs[0] if d.accepted]
    (whole,) = [d for d in decs[1] if d.accepted]
    assert (unsure.weight, unsure.scope, unsure.whole) == (1.0, "intent", False)
    assert unsure.reason == "abstain (kept at weight 1, intent only): vote share 0.50 < 0.6"
    assert (whole.scope, whole.whole) == ("frame", True)
    assert Decision.from_dict(json.loads(json.dumps(unsure.to_dict()))) == unsure
    assert "scope" not in whole.to_dict()                       # files written before scopes read the same
    assert acceptance_report([split, sure], decs)["n_kept_intent_only"] == 1
    ranked = accept_all([split, sure], "best_of_n", {"k": 1}, min_vote=0.6, keep_fraction=0.5,
                        abstain_weight=1.0, abstain_scope="intent")
    assert [[(d.weight, d.scope) for d in ds if d.accepted] for ds in ranked] == [[(1.0, "intent")], [(1.0, "frame")]]
    with pytest.raises(AcceptError, match="abstain_scope"):
        accept_all([split], "best_of_n", {"k": 1}, abstain_scope="slots")
    with pytest.raises(AcceptError, match="abstain_weight > 0"):
        AcceptConfig(rule="best_of_n", abstain_scope="intent").validate()


def test_curriculum_keeps_the_surest_share_of_the_pool_ranked_by_vote_then_text_confidence():
    pools = [_voted("u0", (4, 6)), _voted("u1", (10, 0)), _voted("u2", (7, 3), [-1.0, -1.0]),
             _voted("u3", (7, 3), [-0.1, -1.0]), []]
    # kept frames' vote shares: u0 0.6, u1 1.0, u2 0.7, u3 0.7 (u3's text model is surer); u4 has no candidates
    def kept_utts(decisions):
        return [ds[0].utt_id for ds in decisions if any(d.accepted for d in ds)]
    assert kept_utts(accept_all(pools, "best_of_n", {"k": 1}, keep_fraction=1.0)) == ["u0", "u1", "u2", "u3"]
    assert kept_utts(accept_all(pools, "best_of_n", {"k": 1}, keep_fraction=0.5)) == ["u1", "u3"]
    assert kept_utts(accept_all(pools, "best_of_n", {"k": 1}, keep_fraction=0.75)) == ["u1", "u2", "u3"]
    left_out = accept_all(pools, "best_of_n", {"k": 1}, keep_fraction=0.5)[2]
    assert [d.reason for d in left_out if d.index == 0] == [
        "abstain: curriculum: not in the surest 50% (vote share 0.70, text confidence 0.37)"]
    soft = accept_all(pools, "best_of_n", {"k": 1}, keep_fraction=0.5, abstain_weight=0.5)
    assert [[d.weight for d in ds if d.accepted] for ds in soft] == [[0.5], [1.0], [0.5], [1.0], []]
    # the bars first, then the ranking: an utterance the bar dropped counts in the pool but is not revived
    both = accept_all(pools, "best_of_n", {"k": 1}, min_vote=0.65, keep_fraction=0.75)
    assert kept_utts(both) == ["u1", "u2", "u3"]
    with pytest.raises(AcceptError, match="keep_fraction"):
        accept_all(pools, "best_of_n", {"k": 1}, keep_fraction=0.0)


def test_accept_config_curriculum_per_round_and_decisions_round_trip_their_weight():
    from assistant.rsft.accept import AcceptConfig
    from assistant.rsft.types import Decision

    cfg = AcceptConfig(rule="best_of_n", curriculum=[0.5, 0.8])
    assert [cfg.keep_fraction(k) for k in (1, 2, 3)] == [0.5, 0.8, 0.8]
    assert AcceptConfig().keep_fraction(1) == 1.0
    for bad in ([0.0], [1.2]):
        with pytest.raises(AcceptError, match="curriculum"):
            AcceptConfig(rule="best_of_n", curriculum=bad).validate()
    d = Decision("a", 2, True, "abstain (kept at weight 0.3): x", 0.3)
    assert Decision.from_dict(d.to_dict()) == d
    assert Decision.from_dict({"utt_id": "a", "index": 0, "accepted": True, "reason": "r"}).weight == 1.0
