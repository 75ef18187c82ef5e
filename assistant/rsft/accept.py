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
from typing import Any, Callable

import numpy as np

from assistant.metrics import normalise_text
from assistant.rsft.types import Decision, Scored


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


def statistical(scored: list[Scored], rng: np.random.Generator, *, beta: float = 0.1, k: int = 1,
                cap: int | None = None, bound: float | None = None) -> list[Decision]:
    """Statistical rejection sampling (RSO, Liu et al. 2023).

    The candidates are samples from the policy q. Visit them in random order (without
    replacement) and accept y with probability exp((r(y) - M) / beta) until ``min(k, cap)`` are
    accepted or none are left: one pass, so no candidate is kept twice. Accepted samples follow
    q(y) exp(r(y)/beta) / Z.

    ``bound=None`` (the paper): M = the highest reward among this utterance's candidates. The
    best candidate is then always accepted if reached, so every utterance keeps >= 1, but the
    kept set only approaches the target as the number of candidates grows: each sample's own best
    is over-kept, so outputs that are both rare and high-reward are under-kept (tests/test_accept.py
    measures this: fine with 32 candidates, far off with 4).
    ``bound=<float>``: M = a known upper bound on the reward (e.g. 1.0 for rewards in [0, 1]).
    Exact for any number of candidates; the price is that an utterance may keep nothing.

    ``beta`` is in reward units: small beta -> close to best-of-n; large -> close to plain sampling.
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
    top = max(s.reward for s in scored)
    if bound is None:
        ceiling = top
    else:
        ceiling = _finite(bound, "bound", rule)
        if top > ceiling:
            raise AcceptError(f"{rule}: utterance {scored[0].utt_id!r} has reward {top} above bound={ceiling}; "
                              "raise bound to the reward's true maximum, or use bound=None")
    reasons: dict[int, tuple[bool, str]] = {}
    kept = 0
    for i in rng.permutation(len(scored)):
        if kept >= limit:
            reasons[int(i)] = (False, f"{rule}: not drawn (k reached)")
        elif rng.random() < math.exp((scored[i].reward - ceiling) / beta):
            reasons[int(i)] = (True, f"{rule}: accepted")
            kept += 1
        else:
            reasons[int(i)] = (False, f"{rule}: rejected")
    return _decisions(scored, reasons)


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
    return ("<unparsed>", normalise_text(s.candidate.text)) if key is None else key


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
        raise AcceptError(f"rule {rule_name!r} needs parameter(s) {missing} (set them in the RSFT config)")
    return rule


def accept(scored: list[Scored], rng: np.random.Generator, rule: str = "statistical", **params: Any) -> list[Decision]:
    """Apply the named rule to the candidates of one utterance."""
    return _rule_and_params(rule, params)(scored, rng, **params)


def utterance_rng(seed: int, utt_id: str) -> np.random.Generator:
    """Randomness per (seed, utterance): an utterance's decisions do not depend on the rest of the batch."""
    return np.random.default_rng([int(seed), zlib.crc32(utt_id.encode("utf-8"))])


def accept_all(scored_lists: list[list[Scored]], rule_name: str, params: dict[str, Any] | None = None,
               seed: int = 0) -> list[list[Decision]]:
    """One list of decisions per utterance (empty for an utterance without candidates)."""
    params = dict(params or {})
    rule = _rule_and_params(rule_name, params)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise AcceptError(f"accept_all: seed must be a whole number >= 0, got {seed!r}")
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
        out.append(rule(scored, utterance_rng(seed, utt), **params))
    return out


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
    without_candidates = 0
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
                for name, v in s.rewards.items():
                    parts_kept.setdefault(name, []).append(v)
        kept_counts.append(n_kept)
        if n_kept == 0:
            kept_nothing.append(scored[0].utt_id)
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
        "utterances_kept_nothing": kept_nothing[:max_ids],
        "per_rule": {rule: {"accepted": c["accepted"], "rejected": c["rejected"]}
                     for rule, c in sorted(per_rule.items())},
        "reasons": dict(sorted(reasons.items())),
    }
