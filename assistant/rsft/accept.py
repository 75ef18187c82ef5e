"""Acceptance rules: which scored candidates of an utterance are kept for the next fine-tuning round.

Every rule has one interface, over the candidates of ONE utterance::

    rule(scored: list[Scored], rng: np.random.Generator, **params) -> list[Decision]

returning one Decision per candidate (in the order given), accepted or not, with a reason that
starts with the rule's name. Deterministic rules ignore ``rng``.

- ``statistical``       RSO (Liu et al. 2023): rejection sampling towards q(y) exp(r(y)/beta) / Z
- ``best_of_n``         Llama 2 / RAFT: the top k by reward
- ``threshold``         ReST: every candidate with reward >= tau
- ``distinct_correct``  RFT (Yuan et al. 2023): every distinct candidate with reward >= bar

``accept_all`` applies a rule to every utterance with reproducible per-utterance randomness;
``acceptance_report`` summarises the outcome.
"""

from __future__ import annotations

import inspect
import math
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from assistant.rsft.types import Decision, Scored
from assistant.text import normalize_text


class AcceptError(ValueError):
    """Bad scores or parameters for an acceptance rule; the message names the utterance or parameter."""


# --------------------------------------------------------------------------- shared helpers


def _check_scored(scored: list[Scored], rule: str) -> None:
    """One utterance, distinct indices, finite rewards."""
    if not scored:
        return
    utt = scored[0].utt_id
    seen: set[int] = set()
    for s in scored:
        if s.utt_id != utt:
            raise AcceptError(f"{rule}: got candidates of utterances {utt!r} and {s.utt_id!r} in one list; "
                              "rules take the candidates of ONE utterance (use accept_all for many)")
        if s.index in seen:
            raise AcceptError(f"{rule}: utterance {utt!r} has candidate index {s.index} twice")
        seen.add(s.index)
        if not math.isfinite(s.reward):
            raise AcceptError(f"{rule}: utterance {utt!r} candidate {s.index} has reward {s.reward}; "
                              "rewards must be finite (check the reward that produced it)")


def _positive_int(value: Any, name: str, rule: str, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise AcceptError(f"{rule}: {name} must be a whole number >= 1, got {value!r}")
    return int(value)


def _finite(value: Any, name: str, rule: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise AcceptError(f"{rule}: {name} must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise AcceptError(f"{rule}: {name} must be finite, got {value}")
    return value


def _best_first(scored: list[Scored]) -> list[int]:
    """Positions by reward, ties broken by the model's log-prob, then by candidate index."""
    return sorted(range(len(scored)), key=lambda i: (-scored[i].reward, -scored[i].candidate.logprob,
                                                     scored[i].index))


def _decisions(scored: list[Scored], reasons: dict[int, tuple[bool, str]]) -> list[Decision]:
    return [Decision(s.utt_id, s.index, *reasons[i]) for i, s in enumerate(scored)]


# --------------------------------------------------------------------------- rules


def _draws(scored: list[Scored]) -> list[int]:
    """Positions of the sampled draws: a distinct candidate appears ``count`` times (its repeats were
    merged by the sampler), a greedy-only candidate (count 0) not at all."""
    return [i for i, s in enumerate(scored) for _ in range(max(0, int(s.candidate.count)))]


def statistical(scored: list[Scored], rng: np.random.Generator, *, beta: float = 0.1, k: int = 1,
                cap: int | None = None, bound: float | None = None, normalize: bool = False,
                correct_proposal: bool = True) -> list[Decision]:
    """Statistical rejection sampling (RSO, Liu et al. 2023), exact over deduplicated candidates.

    The *draws* are samples from the policy q: a distinct candidate stands for ``count`` of them (the
    sampler merges repeats), so the rule runs over draws, not over the distinct support. Visit the draws
    in random order and accept y with probability exp((r(y) - M) / beta) until ``min(k, cap)`` distinct
    candidates are accepted; accepted samples follow q(y) exp(r(y)/beta) / Z. A candidate only the
    greedy row produced (count 0) is not a draw and is never kept.

    ``correct_proposal``: when the candidates carry ``ref_logprob`` (the frozen reference model) the reward
    is read as r + beta * (log pi_ref - log q), so after round 1, when q is the fine-tuned policy, the
    target stays pi_ref(y) exp(r/beta) instead of drifting to pi_ref exp(k r / beta). In round 1 the
    correction is 0. Exact when sampling at temperature 1 without truncation (``logprob`` is q's).
    ``normalize``: rewards are centred and divided by their standard deviation over the utterance's
    draws first, so ``beta`` is in units of that spread (beta 1: one standard deviation = a factor e).

    ``bound=None`` (the paper): M = the highest (corrected) reward among the draws. The best draw is then
    always accepted if reached, so every utterance keeps >= 1, but the kept set only approaches the target
    as the number of draws grows (tests/test_accept.py measures this). ``bound=<float>``: M = a known upper
    bound on the (corrected) reward over all outputs. Exact for any number of draws; the price is that an
    utterance may keep nothing.
    """
    rule = "statistical"
    _check_scored(scored, rule)
    beta = _finite(beta, "beta", rule)
    if beta <= 0:
        raise AcceptError(f"{rule}: beta must be > 0 (the temperature of exp(r/beta)), got {beta}")
    limit = _positive_int(k, "k", rule)
    cap = _positive_int(cap, "cap", rule, allow_none=True)
    limit = min(limit, cap) if cap is not None else limit
    if not scored:
        return []
    draws = _draws(scored)
    if bound is not None:
        ceiling = _finite(bound, "bound", rule)
    if normalize and bound is not None:
        raise AcceptError(f"{rule}: normalize=True rescales rewards per utterance, so a fixed bound means "
                          "nothing; leave bound unset")
    effective, correction = _effective_rewards(scored, draws, beta, normalize, correct_proposal)
    if bound is None:
        ceiling = float(effective[draws].max()) if draws else 0.0
    elif effective.max() > ceiling:
        what = "reward" if not correction.any() else "corrected reward r + beta*(ref_logprob - logprob)"
        raise AcceptError(f"{rule}: utterance {scored[0].utt_id!r} has {what} {effective.max():.4g} above "
                          f"bound={ceiling}; raise bound to its true maximum (with a drifted proposal it must "
                          "cover the correction too), or use bound=None")
    reasons: dict[int, tuple[bool, str]] = {i: (False, f"{rule}: not a sample (greedy row only)")
                                            for i in range(len(scored)) if i not in set(draws)}
    reasons.update(_visit_draws(draws, effective, ceiling, beta, limit, rng, rule))
    return _decisions(scored, reasons)


def _effective_rewards(scored: list[Scored], draws: list[int], beta: float, normalize: bool,
                       correct_proposal: bool) -> tuple[np.ndarray, np.ndarray]:
    """(reward the rule uses, its proposal correction beta * (ref_logprob - logprob)) per candidate."""
    rewards = np.array([s.reward for s in scored], dtype=float)
    if normalize and draws:
        spread = float(rewards[draws].std())
        rewards = (rewards - float(rewards[draws].mean())) / spread if spread > 0 else np.zeros_like(rewards)
    correction = np.zeros_like(rewards)
    if correct_proposal:
        for i, s in enumerate(scored):
            ref, own = s.candidate.ref_logprob, s.candidate.logprob
            if ref is not None and math.isfinite(ref) and math.isfinite(own):
                correction[i] = beta * (ref - own)
    return rewards + correction, correction


def _visit_draws(draws: list[int], effective: np.ndarray, ceiling: float, beta: float, limit: int,
                 rng: np.random.Generator, rule: str) -> dict[int, tuple[bool, str]]:
    """The draws in random order, each accepted with probability exp((r - M) / beta), until ``limit``
    distinct candidates are kept."""
    reasons: dict[int, tuple[bool, str]] = {}
    kept: set[int] = set()
    for d in rng.permutation(len(draws)):
        i = draws[int(d)]
        if i in kept:
            continue                                   # a repeat of a kept candidate: nothing new to keep
        if len(kept) >= limit:
            reasons.setdefault(i, (False, f"{rule}: not drawn (k reached)"))
            continue
        if rng.random() < math.exp(min(0.0, (effective[i] - ceiling) / beta)):
            reasons[i] = (True, f"{rule}: accepted")
            kept.add(i)
        else:
            reasons.setdefault(i, (False, f"{rule}: rejected"))
    return reasons


def best_of_n(scored: list[Scored], rng: np.random.Generator | None = None, *, k: int = 1) -> list[Decision]:
    """The ``k`` highest rewards (ties: higher log-prob, then lower index). Deterministic."""
    rule = "best_of_n"
    _check_scored(scored, rule)
    k = _positive_int(k, "k", rule)
    reasons = {i: (False, f"{rule}: below top-k") for i in range(len(scored))}
    for i in _best_first(scored)[:k]:
        reasons[i] = (True, f"{rule}: top-k")
    return _decisions(scored, reasons)


def threshold(scored: list[Scored], rng: np.random.Generator | None = None, *, tau: float,
              cap: int | None = None) -> list[Decision]:
    """Every candidate with reward >= ``tau``; beyond ``cap``, the best ones. Deterministic."""
    rule = "threshold"
    _check_scored(scored, rule)
    tau = _finite(tau, "tau", rule)
    cap = _positive_int(cap, "cap", rule, allow_none=True)
    reasons = {i: (False, f"{rule}: below tau") for i in range(len(scored))}
    passed = [i for i in _best_first(scored) if scored[i].reward >= tau]
    for rank, i in enumerate(passed):
        reasons[i] = (True, f"{rule}: reward >= tau") if cap is None or rank < cap else (False, f"{rule}: over cap")
    return _decisions(scored, reasons)


def distinct_key(s: Scored) -> tuple:
    """Candidates with the same intent, slots and transcript (normalised) count as one."""
    key = s.candidate.frame_key()
    return ("<unparsed>", normalize_text(s.candidate.text)) if key is None else key


def distinct_correct(scored: list[Scored], rng: np.random.Generator | None = None, *, bar: float,
                     cap: int | None = None) -> list[Decision]:
    """Every distinct candidate with reward >= ``bar`` (the best copy of each), at most ``cap``
    (the best distinct ones). Deterministic."""
    rule = "distinct_correct"
    _check_scored(scored, rule)
    bar = _finite(bar, "bar", rule)
    cap = _positive_int(cap, "cap", rule, allow_none=True)
    reasons = {i: (False, f"{rule}: below bar") for i in range(len(scored))}
    seen: set[tuple] = set()
    kept = 0
    for i in _best_first(scored):
        if scored[i].reward < bar:
            break
        key = distinct_key(scored[i])
        if key in seen:
            reasons[i] = (False, f"{rule}: duplicate")
        elif cap is not None and kept >= cap:
            reasons[i] = (False, f"{rule}: over cap")
        else:
            reasons[i] = (True, f"{rule}: distinct, reward >= bar")
            kept += 1
        seen.add(key)
    return _decisions(scored, reasons)


Rule = Callable[..., list[Decision]]
SCOPES = ("frame", "intent")   # what a kept frame teaches (Decision.scope): all of it, or only its intent

RULES: dict[str, Rule] = {
    "statistical": statistical,
    "best_of_n": best_of_n,
    "threshold": threshold,
    "distinct_correct": distinct_correct,
}


# --------------------------------------------------------------------------- many utterances


def _rule_and_params(rule_name: str, params: dict[str, Any]) -> Rule:
    if rule_name not in RULES:
        raise AcceptError(f"unknown acceptance rule {rule_name!r}; choose from {sorted(RULES)}")
    rule = RULES[rule_name]
    spec = {n: p for n, p in inspect.signature(rule).parameters.items() if p.kind is p.KEYWORD_ONLY}
    unknown = sorted(set(params) - set(spec))
    if unknown:
        raise AcceptError(f"rule {rule_name!r} has no parameter(s) {unknown}; it takes {sorted(spec)}")
    missing = sorted(n for n, p in spec.items() if p.default is p.empty and n not in params)
    if missing:
        raise AcceptError(f"rule {rule_name!r} needs parameter(s) {missing} (set accept.<name> in the RSFT config)")
    return rule


@dataclass
class AcceptConfig:
    """RSFT's ``accept:`` section: the rule, its parameters (each rule reads the ones it takes), and when
    an utterance keeps nothing."""
    rule: str = "statistical"            # statistical / best_of_n / threshold / distinct_correct
    beta: float = 0.1                    # statistical: temperature of exp(r / beta)
    k: int = 1                           # statistical, best_of_n: distinct candidates kept per utterance
    normalize: bool = False              # statistical: rewards centred / scaled per utterance, beta in std units
    correct_proposal: bool = True        # statistical: from round 2 the target stays pi_ref * exp(r / beta)
    bound: float | None = None           # statistical: a known reward upper bound (None: the utterance's max)
    tau: float | None = None             # threshold: the reward a candidate needs (required by that rule)
    bar: float | None = None             # distinct_correct: the reward a distinct candidate needs (required)
    cap: int | None = None               # statistical / threshold / distinct_correct: most kept (None: no cap)
    min_vote: float = 0.0                # abstain: keep nothing for an utterance whose kept frame won less
                                         # than this share of the sampled draws ...
    min_text_confidence: float = 0.0     # ... unless the text model gives it at least this probability
                                         # (reads the teacher reward; 0 = the text model never vouches)
    # a curriculum: the share of the pool's utterances kept in round k, the most confident first (vote
    # share of the kept frame, then the text model's confidence); the last share holds for later rounds
    # (e.g. [0.7, 1.0]: round 1 keeps its surest 70 %, round 2 every clip); empty: no ranking
    curriculum: list[float] = field(default_factory=list)
    abstain_weight: float = 0.0          # an utterance left out by min_vote or the curriculum keeps its frame
                                         # at this loss weight (0: it contributes nothing)
    abstain_scope: str = "frame"         # ... and teaches all of it ("frame") or only its intent ("intent": on
                                         # clips nobody is sure of, the intent is right far more often than
                                         # the words and slots)

    def keep_fraction(self, round_k: int) -> float:
        """The curriculum's share for round ``round_k`` (1-based); 1.0 without a curriculum."""
        return float(self.curriculum[min(round_k, len(self.curriculum)) - 1]) if self.curriculum else 1.0

    def rule_params(self) -> dict[str, Any]:
        """The parameters the rule takes (its keyword-only arguments); an unset optional one keeps the
        rule's default."""
        if self.rule not in RULES:
            raise AcceptError(f"unknown acceptance rule {self.rule!r}; choose from {sorted(RULES)}")
        params = [p for p in inspect.signature(RULES[self.rule]).parameters.values() if p.kind is p.KEYWORD_ONLY]
        # None is passed on where the rule's own default is None (cap, bound: "none"); a required one stays unset
        return {p.name: getattr(self, p.name) for p in params if getattr(self, p.name) is not None or p.default is None}

    def validate(self) -> None:
        _rule_and_params(self.rule, self.rule_params())        # unknown rule, a required parameter unset
        if self.beta <= 0:
            raise AcceptError(f"accept.beta must be > 0, got {self.beta}")
        for name in ("min_vote", "min_text_confidence", "abstain_weight"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise AcceptError(f"accept.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.abstain_scope not in SCOPES:
            raise AcceptError(f"accept.abstain_scope must be one of {SCOPES}, got {self.abstain_scope!r}")
        if self.abstain_scope != "frame" and self.abstain_weight <= 0:
            raise AcceptError(f"accept.abstain_scope {self.abstain_scope!r} needs accept.abstain_weight > 0 (at "
                              "weight 0 a left-out clip teaches nothing)")
        if any(not 0.0 < float(f) <= 1.0 for f in self.curriculum):
            raise AcceptError(f"accept.curriculum holds shares of the pool in (0, 1], got {self.curriculum}")


def accept(scored: list[Scored], rng: np.random.Generator, rule: str = "statistical", **params: Any) -> list[Decision]:
    """Apply the named rule to the candidates of one utterance."""
    return _rule_and_params(rule, params)(scored, rng, **params)


def utterance_rng(seed: int, utt_id: str) -> np.random.Generator:
    """Randomness per (seed, utterance): an utterance's decisions do not depend on the rest of the batch."""
    return np.random.default_rng([int(seed), zlib.crc32(utt_id.encode("utf-8"))])


def vote_share(scored: list[Scored], position: int) -> float:
    """Share of an utterance's sampled draws whose frame (intent + slots) is candidate ``position``'s:
    self-consistency, a confidence that needs no label."""
    total = sum(max(0, s.candidate.count) for s in scored)
    key = scored[position].candidate.frame_key(transcript=False)
    if not total or key is None:
        return 0.0
    return sum(max(0, s.candidate.count) for s in scored if s.candidate.frame_key(transcript=False) == key) / total


def text_confidence(scored: list[Scored], position: int) -> float:
    """The text model's probability of candidate ``position``'s frame given its own transcript: exp of
    its ``teacher`` reward (which must have been scored; weight 0 is enough)."""
    s = scored[position]
    if "teacher" not in s.rewards:
        raise AcceptError(f"min_text_confidence needs the 'teacher' reward on every candidate (utterance "
                          f"{s.utt_id!r} has {sorted(s.rewards)}); add teacher: 0.0 to the rewards")
    return math.exp(min(0.0, float(s.rewards["teacher"])))


def _left_out(d: Decision, why: str, weight: float, scope: str = "frame") -> Decision:
    """An accepted decision the confidence bars leave out: rejected, or with ``weight`` > 0 kept at that
    loss weight and ``scope`` (its reason says which)."""
    if weight > 0:
        what = f"weight {weight:g}" + (f", {scope} only" if scope != "frame" else "")
        return Decision(d.utt_id, d.index, True, f"abstain (kept at {what}): {why}", weight, scope)
    return Decision(d.utt_id, d.index, False, f"abstain: {why}")


def abstain(scored: list[Scored], decisions: list[Decision], min_vote: float,
            min_text: float = 0.0, weight: float = 0.0, scope: str = "frame") -> list[Decision]:
    """Drop the utterance's kept candidates unless someone is confident of their frame: the sampler (it
    won at least ``min_vote`` of the draws) or, when ``min_text`` > 0, the text model (it gives the frame
    probability >= ``min_text`` given the kept transcript). An utterance nobody is sure of contributes
    nothing rather than a likely wrong label (or, with ``weight`` > 0, counts that much in the loss, over
    the part of the frame ``scope`` names); the
    text model's vouch lets a reading the sampler never drew (assistant.rsft.readings) correct the
    speech model."""
    if min_vote <= 0:
        return decisions
    out = []
    for i, d in enumerate(decisions):
        share = vote_share(scored, i) if d.accepted else 1.0
        text = text_confidence(scored, i) if min_text > 0 and share < min_vote else 0.0
        if share >= min_vote or (min_text > 0 and text >= min_text):
            out.append(d)
            continue
        why = f"vote share {share:.2f} < {min_vote:g}"
        if min_text > 0:
            why += f", text confidence {text:.2f} < {min_text:g}"
        out.append(_left_out(d, why, weight, scope))
    return out


def utterance_confidence(scored: list[Scored], decisions: list[Decision]) -> tuple[float, float] | None:
    """(vote share, text-model confidence) of the utterance's surest fully kept candidate, the curriculum's
    ranking key (text confidence 0 without the teacher reward); None when nothing is kept at weight 1."""
    best = None
    for i, d in enumerate(decisions):
        if d.whole:
            text = text_confidence(scored, i) if "teacher" in scored[i].rewards else 0.0
            best = max(best or (-1.0, -1.0), (vote_share(scored, i), text))
    return best


def curriculum(scored_lists: list[list[Scored]], decisions: list[list[Decision]], keep_fraction: float,
               weight: float = 0.0, scope: str = "frame") -> list[list[Decision]]:
    """Keep the surest ``keep_fraction`` of the utterances that have candidates (``utterance_confidence``,
    ties by id); the rest are left out as ``abstain`` leaves them (dropped, or kept at ``weight``). Earlier
    rounds learn from the labels most likely right; later ones, from a better model, take the rest."""
    if keep_fraction >= 1.0:
        return decisions
    quota = int(round(keep_fraction * sum(1 for s in scored_lists if s)))
    ranked = []
    for u, (scored, decs) in enumerate(zip(scored_lists, decisions)):
        conf = utterance_confidence(scored, decs) if scored else None
        if conf is not None:
            ranked.append((-conf[0], -conf[1], scored[0].utt_id, u))
    ranked.sort()
    out = list(decisions)
    for rank, (neg_vote, neg_text, _, u) in enumerate(ranked):
        if rank >= quota:
            why = (f"curriculum: not in the surest {keep_fraction:.0%} (vote share {-neg_vote:.2f}, "
                   f"text confidence {-neg_text:.2f})")
            out[u] = [_left_out(d, why, weight, scope) if d.whole else d for d in decisions[u]]
    return out


def accept_all(scored_lists: list[list[Scored]], rule_name: str, params: dict[str, Any] | None = None,
               seed: int = 0, min_vote: float = 0.0, min_text: float = 0.0, keep_fraction: float = 1.0,
               abstain_weight: float = 0.0, abstain_scope: str = "frame") -> list[list[Decision]]:
    """One list of decisions per utterance (empty for an utterance without candidates).

    ``min_vote`` > 0: after the rule, an utterance whose kept frame has a vote share below it (and, with
    ``min_text`` > 0, a text-model confidence below that) keeps nothing (``abstain``). ``keep_fraction``
    < 1: of the rest, only the surest share of all utterances stays (``curriculum``). ``abstain_weight``
    > 0: what those two leave out is kept at that loss weight instead, teaching the part of its frame
    ``abstain_scope`` names ("frame": all, "intent": the intent's tokens)."""
    params = dict(params or {})
    rule = _rule_and_params(rule_name, params)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise AcceptError(f"accept_all: seed must be a whole number >= 0, got {seed!r}")
    for name, value in (("min_vote", min_vote), ("min_text", min_text), ("abstain_weight", abstain_weight)):
        if not 0.0 <= float(value) <= 1.0:
            raise AcceptError(f"accept_all: {name} must be in [0, 1], got {value!r}")
    if abstain_scope not in SCOPES:
        raise AcceptError(f"accept_all: abstain_scope must be one of {SCOPES}, got {abstain_scope!r}")
    if not 0.0 < float(keep_fraction) <= 1.0:
        raise AcceptError(f"accept_all: keep_fraction must be in (0, 1], got {keep_fraction!r}")
    seen: set[str] = set()
    out = []
    for scored in scored_lists:
        if not scored:
            out.append([])
            continue
        utt = scored[0].utt_id
        if utt in seen:
            raise AcceptError(f"accept_all: utterance {utt!r} appears in two candidate lists; "
                              "group all candidates of an utterance into one list")
        seen.add(utt)
        out.append(abstain(scored, rule(scored, utterance_rng(seed, utt), **params), float(min_vote),
                           float(min_text), float(abstain_weight), abstain_scope))
    return curriculum(scored_lists, out, float(keep_fraction), float(abstain_weight), abstain_scope)


# --------------------------------------------------------------------------- report


def _mean(xs: list[float]) -> float | None:
    return float(np.mean(xs)) if xs else None


def acceptance_report(scored_lists: list[list[Scored]], decisions: list[list[Decision]],
                      max_ids: int = 50) -> dict[str, Any]:
    """What a rule kept: rates, mean rewards kept vs all (total and per reward), who kept nothing."""
    if len(scored_lists) != len(decisions):
        raise AcceptError(f"acceptance_report: {len(scored_lists)} scored lists but {len(decisions)} decision lists")
    all_rewards, kept_rewards = [], []
    parts_all: dict[str, list[float]] = {}
    parts_kept: dict[str, list[float]] = {}
    reasons: Counter[str] = Counter()
    per_rule: dict[str, Counter[str]] = {}
    kept_nothing, kept_counts = [], []
    without_candidates = abstained = 0
    top_votes: list[float] = []        # per utterance: the vote share of its most sampled frame
    kept_votes: list[float] = []       # per kept candidate: its frame's vote share
    kept_weights: list[float] = []     # per kept candidate: its loss weight
    kept_intent_only = 0               # kept candidates that teach only their intent (accept.abstain_scope)
    for scored, decs in zip(scored_lists, decisions):
        if not scored:
            without_candidates += 1
            continue
        by_key = {(d.utt_id, d.index): d for d in decs}
        n_kept = 0
        for s in scored:
            d = by_key.get((s.utt_id, s.index))
            if d is None:
                raise AcceptError(f"acceptance_report: no decision for utterance {s.utt_id!r} candidate {s.index}; "
                                  "pass the decisions accept_all returned for these scores")
            all_rewards.append(s.reward)
            for name, v in s.rewards.items():
                parts_all.setdefault(name, []).append(v)
            reasons[d.reason] += 1
            rule = d.reason.split(":", 1)[0]
            per_rule.setdefault(rule, Counter())["accepted" if d.accepted else "rejected"] += 1
            if d.accepted:
                n_kept += 1
                kept_rewards.append(s.reward)
                kept_weights.append(d.weight)
                kept_intent_only += d.scope == "intent"
                for name, v in s.rewards.items():
                    parts_kept.setdefault(name, []).append(v)
        kept_counts.append(n_kept)
        if n_kept == 0:
            kept_nothing.append(scored[0].utt_id)
        if any(by_key[(s.utt_id, s.index)].reason.startswith("abstain") for s in scored):
            abstained += 1
        top = max(range(len(scored)), key=lambda i: scored[i].candidate.count)
        top_votes.append(vote_share(scored, top))
        kept_votes += [vote_share(scored, i) for i, s in enumerate(scored) if by_key[(s.utt_id, s.index)].accepted]
    n_candidates = len(all_rewards)
    return {
        "n_utterances": len(scored_lists),
        "n_utterances_without_candidates": without_candidates,
        "n_candidates": n_candidates,
        "n_accepted": len(kept_rewards),
        "acceptance_rate": len(kept_rewards) / n_candidates if n_candidates else None,
        "mean_reward_all": _mean(all_rewards),
        "mean_reward_kept": _mean(kept_rewards),
        "mean_rewards_all": {k: _mean(v) for k, v in sorted(parts_all.items())},
        "mean_rewards_kept": {k: _mean(parts_kept.get(k, [])) for k in sorted(parts_all)},
        "accepted_per_utterance": _mean([float(c) for c in kept_counts]),
        "n_utterances_kept_nothing": len(kept_nothing),
        "abstention_rate": abstained / max(1, len(scored_lists) - without_candidates),
        "n_kept_below_weight_1": sum(w < 1.0 for w in kept_weights),
        "n_kept_intent_only": kept_intent_only,
        "mean_kept_weight": _mean(kept_weights),
        "mean_top_vote_share": _mean(top_votes),
        "mean_kept_vote_share": _mean(kept_votes),
        "utterances_kept_nothing": kept_nothing[:max_ids],
        "per_rule": {rule: {"accepted": c["accepted"], "rejected": c["rejected"]}
                     for rule, c in sorted(per_rule.items())},
        "reasons": dict(sorted(reasons.items())),
    }
