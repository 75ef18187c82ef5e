"""Rewards: how good is each candidate frame for its utterance?

A reward is a plain callable::

    reward(utterances: list[Utterance], candidates: list[list[Candidate]]) -> list[list[float]]

one list of floats per utterance, one float per candidate, higher is better. Anything with that
signature plugs in; the ones here:

- ``label_reward``    agreement with gold labels (oracle: needs labels, refuses hidden ones)
- ``verifier_reward`` label-free schema checks, a score in [0, 1]
- ``acoustic_reward`` the model's own length-normalised log-probability of the candidate
- ``make_teacher_reward`` the MiniLM text teacher (``TeacherReward``; the model: assistant.nlu)
- ``target_likelihood`` log p(transcript | audio) under an independent stock Whisper (base), per token
  (assistant.rsft.target_likelihood)
- ``vote`` self-consistency: the share of the sampled draws that agree on the candidate's frame
- ``LearnedRewardModel`` a classifier P(correct | audio, candidate) trained on labelled data,
  usable on unlabelled audio

``score`` runs several rewards and keeps the breakdown (list[list[Scored]]); ``combine_rewards``
and ``build_reward_fns`` (config-driven, via the ``REWARDS`` registry) wrap that.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from assistant.data.manifest import Utterance
from assistant.metrics import slot_counts, wer
from assistant.rsft.types import Candidate, Scored
from assistant.schema import load_schema
from assistant.text import normalize_text

RewardFn = Callable[[list[Utterance], list[list[Candidate]]], list[list[float]]]
UNPARSEABLE_SCORE = -20.0   # text-teacher reward of a candidate whose frame could not be parsed


class RewardError(ValueError):
    """A reward that cannot be computed; the message names the reward, the utterance and the fix."""


class LabelsHiddenError(RewardError):
    """A label-based reward was asked to score utterances whose gold labels are hidden."""


# --------------------------------------------------------------------------- shared checks


def check_batch(utterances: list[Utterance], candidates: list[list[Candidate]], who: str = "reward") -> None:
    """Candidates must come as one list per utterance, in the same order, with matching ids."""
    if len(utterances) != len(candidates):
        raise RewardError(f"{who}: {len(utterances)} utterances but {len(candidates)} candidate lists; "
                          "pass one (possibly empty) candidate list per utterance")
    for u, cands in zip(utterances, candidates):
        for c in cands:
            if c.utt_id != u.id:
                raise RewardError(f"{who}: candidate {c.index} has utt_id {c.utt_id!r} but sits in the list of "
                                  f"utterance {u.id!r}; keep candidates in manifest order")


def labels_hidden(u: Utterance) -> bool:
    return bool(u.meta.get("labels_hidden"))


def require_labels(utterances: list[Utterance], who: str, reveal_labels: bool) -> None:
    if reveal_labels:
        return
    hidden = [u.id for u in utterances if labels_hidden(u)]
    if hidden:
        shown = ", ".join(repr(h) for h in hidden[:3]) + (f" and {len(hidden) - 3} more" if len(hidden) > 3 else "")
        raise LabelsHiddenError(
            f"{who} needs gold labels, but utterance(s) {shown} have labels_hidden set (an unlabelled pool). "
            "Use label-free rewards (verifier, acoustic, teacher, learned), or pass reveal_labels=True "
            "for the oracle experiment")


def _slot_f1(gold: Mapping[str, str], pred: Mapping[str, str]) -> float:
    tp, fp, fn = slot_counts(gold, pred)
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def frame_correct(u: Utterance, c: Candidate, max_wer: float | None = None) -> bool:
    """The candidate's frame has the gold intent and exactly the gold slots (values normalised);
    with ``max_wer``, its transcript must also be within that word error rate."""
    f = c.frame
    if f is None or f.intent != u.intent:
        return False
    _, fp, fn = slot_counts(u.slots, f.slots)
    if fp or fn:
        return False
    return max_wer is None or wer([u.text], [f.transcript]) <= max_wer


# --------------------------------------------------------------------------- label (oracle)


def label_reward(utterances: list[Utterance], candidates: list[list[Candidate]], *,
                 intent_weight: float = 0.5, slot_weight: float = 0.3, transcript_weight: float = 0.2,
                 reveal_labels: bool = False) -> list[list[float]]:
    """Agreement with the gold labels, in [0, 1].

    ``(intent_weight * [intent == gold] + slot_weight * slot_F1 + transcript_weight * max(0, 1 - WER))
    / (sum of weights)``. Slot F1 is over exact (name, normalised value) pairs and is 1 when both
    frames have no slots; WER is word-level on normalised text (assistant.metrics). A candidate that
    is not a well-formed frame scores 0: it is never worth training on. The default weights count the
    intent most (what the assistant acts on), slots next, the transcript least.

    Refuses utterances whose labels are hidden (``meta["labels_hidden"]``) unless
    ``reveal_labels=True`` -- the oracle must be asked for explicitly.
    """
    weights = (intent_weight, slot_weight, transcript_weight)
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise RewardError(f"label_reward: weights {weights} must be finite, >= 0 and not all 0")
    check_batch(utterances, candidates, "label_reward")
    require_labels(utterances, "label_reward", reveal_labels)
    total = sum(weights)
    out = []
    for u, cands in zip(utterances, candidates):
        row = []
        for c in cands:
            f = c.frame
            if f is None:
                row.append(0.0)
                continue
            text_score = max(0.0, 1.0 - wer([u.text], [f.transcript]))
            row.append((intent_weight * (f.intent == u.intent) + slot_weight * _slot_f1(u.slots, f.slots)
                        + transcript_weight * text_score) / total)
        out.append(row)
    return out


# --------------------------------------------------------------------------- verifier (label-free)

# Relative weights of the checks; score = weight of the checks passed / total weight, so exactly
# 1.0 when every check passes and 0.0 for an unparsable output.
VERIFIER_WEIGHTS = {
    "parsed": 3,         # a well-formed "transcript | intent | slots" line
    "schema": 4,         # known intent, allowed + required slots, well-formed values; halves per problem
    "grounded": 2,       # fraction of open-valued slots whose value occurs in the transcript
    "transcript": 1,     # a non-empty transcript
}


@dataclass
class Verification:
    score: float
    problems: list[str]


@functools.lru_cache(maxsize=4)
def _load_schema_cached(path: str | None):
    return load_schema(path)


def _schema_or_default(schema):
    return _load_schema_cached(None) if schema is None else schema


def _contains_words(text: str, phrase: str) -> bool:
    return f" {normalize_text(phrase)} " in f" {normalize_text(text)} "


def verify(candidate: Candidate, schema=None) -> Verification:
    """Label-free checks of one candidate against the schema, with the problems found.

    Enum slots are not checked for grounding: their values are canonical labels (FSC says
    ``object=volume`` for "make it louder"); check_frame already holds them to the value list.
    """
    schema = _schema_or_default(schema)
    parsed = candidate.parsed
    if not parsed.valid or parsed.frame is None:
        return Verification(0.0, [f"not a well-formed frame: {parsed.error}"])
    f = parsed.frame
    problems = list(schema.check_frame(f.intent, f.slots))
    schema_term = 0.0 if f.intent not in schema.intents else 0.5 ** len(problems)
    open_slots = [(n, v) for n, v in f.slots.items()
                  if getattr(schema.slots.get(n), "kind", "text") != "enum"]
    ungrounded = [n for n, v in open_slots if not _contains_words(f.transcript, v)]
    problems += [f"slot {n!r}={f.slots[n]!r} does not occur in the transcript" for n in ungrounded]
    grounded = 1.0 - len(ungrounded) / len(open_slots) if open_slots else 1.0
    has_text = bool(f.transcript.strip())
    if not has_text:
        problems.append("empty transcript")
    w = VERIFIER_WEIGHTS
    passed = w["parsed"] + w["schema"] * schema_term + w["grounded"] * grounded + w["transcript"] * has_text
    return Verification(passed / sum(w.values()), problems)


def verifier_reward(utterances: list[Utterance], candidates: list[list[Candidate]], *,
                    schema=None) -> list[list[float]]:
    """Label-free score in [0, 1] from the schema (see ``VERIFIER_WEIGHTS`` and ``verify``).

    Never reads the gold labels, so it works on the unlabelled pool. ``schema`` defaults to
    assistant.schema.load_schema() (data/schema.yaml).
    """
    check_batch(utterances, candidates, "verifier_reward")
    schema = _schema_or_default(schema)
    return [[verify(c, schema).score for c in cands] for cands in candidates]


# --------------------------------------------------------------------------- acoustic (model confidence)


def acoustic_reward(utterances: list[Utterance], candidates: list[list[Candidate]], *,
                    length_alpha: float = 1.0) -> list[list[float]]:
    """The candidate's sequence log-prob under the sampling model / (number of tokens) ** length_alpha.

    Values are <= 0 (0 = certain). ``length_alpha=1`` is the per-token mean (as the confidence
    in assistant.inference); 0 gives the raw sum, which favours short outputs.
    """
    check_batch(utterances, candidates, "acoustic_reward")
    return [[c.logprob / max(c.num_tokens, 1) ** length_alpha for c in cands] for cands in candidates]


# --------------------------------------------------------------------------- teacher


class TeacherReward:
    """Reward callable for RSFT: ``reward(utterances, candidates) -> [[float per candidate] per utterance]``.

    Each candidate has ``.frame`` (an ``assistant.frames.Frame`` or None when its text did not parse).
    A parsed frame scores ``TextTeacher.log_likelihood``, floored at ``unparseable + 1``; an unparseable
    one scores ``unparseable`` (-20), so it always ranks last.
    ``transcript="frame"`` scores the frame against its own transcript (self-consistency: the only text an
    unlabelled clip has); ``"utterance"`` uses ``utterance.text`` when non-empty (e.g. an ASR pass stored in
    the manifest), falling back to the frame's transcript.
    """

    def __init__(self, teacher: Any = None, transcript: str = "frame", unparseable: float = UNPARSEABLE_SCORE):
        if transcript not in ("frame", "utterance"):
            raise RewardError(f"TeacherReward(transcript={transcript!r}): use 'frame' or 'utterance'")
        self._teacher = teacher
        self.transcript = transcript
        self.unparseable = float(unparseable)

    @property
    def teacher(self):
        """The text model given, else the default one (``assistant.nlu.default_teacher``), loaded on first use."""
        if self._teacher is None:
            from assistant.nlu import default_teacher   # torch + MiniLM: only once the reward runs

            self._teacher = default_teacher()
        return self._teacher

    def __call__(self, utterances: Sequence[Any], candidates: Sequence[Sequence[Candidate]]) -> list[list[float]]:
        if len(utterances) != len(candidates):
            raise RewardError(f"teacher reward: {len(utterances)} utterances but {len(candidates)} candidate lists")
        rows: list[tuple[int, int]] = []
        texts, intents, slots = [], [], []
        for u_i, (utterance, cands) in enumerate(zip(utterances, candidates)):
            for c_i, cand in enumerate(cands):
                frame = cand.frame
                if frame is None:
                    continue
                text = getattr(utterance, "text", "") if self.transcript == "utterance" else ""
                rows.append((u_i, c_i))
                texts.append(text or frame.transcript or "")
                intents.append(frame.intent)
                slots.append(dict(frame.slots or {}))
        out = [[self.unparseable] * len(c) for c in candidates]
        if rows:
            # A parsed frame, however implausible, still outranks text that is not a frame at all.
            worst_parsed = self.unparseable + 1.0
            for (u_i, c_i), score in zip(rows, self.teacher.log_likelihood(texts, intents, slots)):
                out[u_i][c_i] = max(float(score), worst_parsed)
        return out


def make_teacher_reward(teacher: Any = None) -> RewardFn:
    """The text teacher as a reward callable.

    ``teacher`` may be None (a ``TeacherReward`` on the default text teacher, which only loads when the
    reward first runs), a trained ``TextTeacher`` (anything with ``log_likelihood``), an object with a
    ``teacher_reward`` method, or any callable with the reward signature (e.g. a ``TeacherReward``).
    """
    if teacher is None:
        fn = _default_teacher_reward
    elif callable(getattr(teacher, "log_likelihood", None)):
        fn = TeacherReward(teacher)
    elif callable(getattr(teacher, "teacher_reward", None)):
        fn = teacher.teacher_reward
    elif callable(teacher):
        fn = teacher
    else:
        raise RewardError(f"make_teacher_reward: {type(teacher).__name__} is neither callable nor has a "
                          "teacher_reward(utterances, candidates) method")

    def teacher_reward(utterances: list[Utterance], candidates: list[list[Candidate]]) -> list[list[float]]:
        check_batch(utterances, candidates, "teacher_reward")
        return fn(utterances, candidates)

    return teacher_reward


_DEFAULT_REWARD: TeacherReward | None = None


def _default_teacher_reward(utterances: Sequence[Any], candidates: Sequence[Sequence[Any]]) -> list[list[float]]:
    """The default text-teacher reward (frame scored against its own transcript), one per process."""
    global _DEFAULT_REWARD
    if _DEFAULT_REWARD is None:
        _DEFAULT_REWARD = TeacherReward()
    return _DEFAULT_REWARD(utterances, candidates)


def make_agreement_reward(teacher: Any = None, weight: float = 1.0, stock_bonus: float = 0.0) -> RewardFn:
    """The deployed second pass as a reward (assistant.nlu): log p_speech(frame | audio) + weight *
    log p_text(frame | transcript), + ``stock_bonus`` for a reading of the stock transcript (source
    "stock", assistant.rsft.readings). The speech term is the candidate's log-prob under the model that
    decoded (or scored) it, the text term the teacher's; ``weight`` and ``stock_bonus`` are the ones the
    text pass chose on dev."""
    text = make_teacher_reward(teacher)
    if not math.isfinite(stock_bonus):
        raise RewardError(f"agreement: stock_bonus must be finite, got {stock_bonus} (leave stock readings out "
                          "instead of a bonus of -inf)")

    def agreement_reward(utterances: list[Utterance], candidates: list[list[Candidate]]) -> list[list[float]]:
        check_batch(utterances, candidates, "agreement")
        t = text(utterances, candidates)
        return [[c.logprob + weight * tv + (stock_bonus if c.source == "stock" else 0.0) for c, tv in zip(cands, tvs)]
                for cands, tvs in zip(candidates, t)]

    return agreement_reward


# --------------------------------------------------------------------------- learned reward model

ENCODER_META_KEY = "encoder_pooled"
_NO_INTENT = "<invalid>"
_SCALAR_FEATURES = ("logprob", "logprob_per_token", "log_num_tokens", "has_ref", "ref_logprob_per_token",
                    "logprob_minus_ref_per_token", "rank", "greedy", "valid", "verifier",
                    "consensus_intent", "consensus_frame")


def _scalar_features(cands: list[Candidate], verifier: list[float]) -> np.ndarray:
    """Per-candidate features that need no labels; consensus = share of the OTHER candidates that agree."""
    n = len(cands)
    order = sorted(range(n), key=lambda i: -cands[i].logprob)
    rank = np.empty(n)
    rank[order] = np.arange(n) / max(n - 1, 1)
    intents = [c.frame.intent if c.frame is not None else None for c in cands]
    keys = [c.frame_key(transcript=False) for c in cands]
    rows = []
    for i, c in enumerate(cands):
        tokens = max(c.num_tokens, 1)
        has_ref = c.ref_logprob is not None
        ref = c.ref_logprob / tokens if has_ref else 0.0
        same_intent = sum(intents[j] == intents[i] for j in range(n) if j != i) if intents[i] else 0
        same_frame = sum(keys[j] == keys[i] for j in range(n) if j != i) if keys[i] else 0
        others = max(n - 1, 1)
        rows.append([c.logprob, c.logprob / tokens, math.log1p(c.num_tokens), float(has_ref), ref,
                     c.logprob / tokens - ref if has_ref else 0.0, rank[i], float(c.greedy),
                     float(c.frame is not None), verifier[i], same_intent / others, same_frame / others])
    return np.asarray(rows, dtype=np.float64).reshape(n, len(_SCALAR_FEATURES))


class LearnedRewardModel:
    """P(candidate is correct | audio, candidate) from features that exist without labels.

    Features per candidate: log-prob (sum, per token), length, reference log-prob, rank by
    log-prob, greedy flag, parse validity, verifier score, agreement with the other candidates
    (same intent / same frame), optional teacher score, one-hot intent, optional pooled encoder
    output of the utterance (``encoder_features(utterances) -> array [n, d]`` or
    ``utterance.meta["encoder_pooled"]``). Standardised, then logistic regression
    (``hidden=0``) or a one-hidden-layer MLP, trained with full-batch Adam on labelled data.

    ``model(utterances, candidates)`` is a reward callable returning probabilities in [0, 1].
    """

    def __init__(self, *, schema=None, teacher: RewardFn | None = None,
                 encoder_features: Callable[[list[Utterance]], np.ndarray] | None = None,
                 use_encoder: bool | None = None, hidden: int = 0, intents: list[str] | None = None,
                 seed: int = 0):
        self.schema = _schema_or_default(schema)
        self.teacher = make_teacher_reward(teacher) if teacher is not None else None
        self.encoder_features = encoder_features
        self.use_encoder = use_encoder
        self.hidden = int(hidden)
        self.intents = sorted(intents if intents is not None else self.schema.intents) + [_NO_INTENT]
        self.seed = seed
        self.encoder_dim = 0
        self.net = None
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None

    # -- features

    @property
    def feature_names(self) -> list[str]:
        names = list(_SCALAR_FEATURES) + (["teacher"] if self.teacher is not None else [])
        names += [f"intent={i}" for i in self.intents]
        return names + [f"encoder[{k}]" for k in range(self.encoder_dim)]

    def _encoder(self, utterances: list[Utterance]) -> np.ndarray:
        if self.encoder_features is not None:
            enc = np.asarray(self.encoder_features(utterances), dtype=np.float64)
            if enc.ndim != 2 or enc.shape[0] != len(utterances):
                raise RewardError(f"learned reward: encoder_features returned shape {enc.shape}, "
                                  f"expected ({len(utterances)}, dim)")
            return enc
        rows = []
        for u in utterances:
            if ENCODER_META_KEY not in u.meta:
                raise RewardError(f"learned reward: utterance {u.id!r} has no meta[{ENCODER_META_KEY!r}]; this "
                                  "model was trained with pooled encoder features -- pass encoder_features= or "
                                  "fill the meta key for every utterance")
            rows.append(np.asarray(u.meta[ENCODER_META_KEY], dtype=np.float64).reshape(-1))
        if len({r.shape for r in rows}) > 1:
            raise RewardError(f"learned reward: meta[{ENCODER_META_KEY!r}] has different sizes across utterances")
        return np.stack(rows) if rows else np.zeros((0, self.encoder_dim))

    def _encoder_available(self, utterances: list[Utterance]) -> bool:
        return self.encoder_features is not None or all(ENCODER_META_KEY in u.meta for u in utterances)

    def features(self, utterances: list[Utterance], candidates: list[list[Candidate]],
                 encoder: np.ndarray | None = None) -> np.ndarray:
        """One row per candidate (utterances in order, candidates in order), unstandardised.
        ``encoder``: the utterances' pooled encoder features when already computed."""
        check_batch(utterances, candidates, "learned reward")
        verifier = verifier_reward(utterances, candidates, schema=self.schema)
        teacher = self.teacher(utterances, candidates) if self.teacher is not None else None
        enc = None
        if self.encoder_dim:
            enc = self._encoder(utterances) if encoder is None else encoder
        if enc is not None and enc.shape[1] != self.encoder_dim:
            raise RewardError(f"learned reward: encoder features have {enc.shape[1]} dims, the model was "
                              f"trained on {self.encoder_dim}; use the same model's encoder")
        index = {name: k for k, name in enumerate(self.intents)}
        blocks = []
        for i, cands in enumerate(candidates):
            if not cands:
                continue
            parts = [_scalar_features(cands, verifier[i])]
            if teacher is not None:
                parts.append(np.asarray(teacher[i], dtype=np.float64).reshape(-1, 1))
            onehot = np.zeros((len(cands), len(self.intents)))
            for j, c in enumerate(cands):
                onehot[j, index.get(c.frame.intent if c.frame is not None else _NO_INTENT, index[_NO_INTENT])] = 1
            parts.append(onehot)
            if enc is not None:
                parts.append(np.repeat(enc[i:i + 1], len(cands), axis=0))
            blocks.append(np.concatenate(parts, axis=1))
        return np.concatenate(blocks) if blocks else np.zeros((0, len(self.feature_names)))

    # -- training

    def _build_net(self, dim: int):
        import torch
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            if self.hidden > 0:
                return torch.nn.Sequential(torch.nn.Linear(dim, self.hidden), torch.nn.Tanh(),
                                           torch.nn.Linear(self.hidden, 1)).double()
            return torch.nn.Linear(dim, 1).double()

    def fit(self, utterances: list[Utterance], candidates: list[list[Candidate]],
            labels: list[list[bool]] | None = None, *, reveal_labels: bool = False, max_wer: float | None = None,
            epochs: int = 300, lr: float = 0.05, weight_decay: float = 1e-3) -> dict[str, float]:
        """Train on labelled data. ``labels`` (one bool per candidate) default to ``frame_correct``
        against the gold labels, which must then be visible (or ``reveal_labels=True``)."""
        import torch

        check_batch(utterances, candidates, "LearnedRewardModel.fit")
        if labels is None:
            require_labels(utterances, "LearnedRewardModel.fit", reveal_labels)
            labels = [[frame_correct(u, c, max_wer) for c in cands] for u, cands in zip(utterances, candidates)]
        if [len(row) for row in labels] != [len(cands) for cands in candidates]:
            raise RewardError("LearnedRewardModel.fit: labels must have one bool per candidate, shaped like candidates")
        y = np.array([bool(v) for row in labels for v in row], dtype=np.float64)
        if y.size == 0 or y.min() == y.max():
            raise RewardError(f"LearnedRewardModel.fit: need both correct and incorrect candidates, got "
                              f"{int(y.sum())} correct of {y.size}; sample more candidates (higher temperature) "
                              "or use more labelled utterances")
        if self.use_encoder is None:
            self.use_encoder = self._encoder_available(utterances)
        encoder = self._encoder(utterances) if self.use_encoder else None
        self.encoder_dim = encoder.shape[1] if encoder is not None else 0
        x = self.features(utterances, candidates, encoder)
        self.mean = x.mean(axis=0)
        self.std = np.maximum(x.std(axis=0), 1e-6)   # constant columns (unused intents) stay 0
        xt = torch.from_numpy((x - self.mean) / self.std)
        yt = torch.from_numpy(y)
        self.net = self._build_net(x.shape[1])
        opt = torch.optim.Adam(self.net.parameters(), lr=lr, weight_decay=weight_decay)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        for _ in range(epochs):
            opt.zero_grad()
            loss = loss_fn(self.net(xt).squeeze(-1), yt)
            loss.backward()
            opt.step()
        with torch.no_grad():
            logits = self.net(xt).squeeze(-1)
            final = float(loss_fn(logits, yt))
            acc = float(((logits > 0).double() == yt).double().mean())
        return {"n_candidates": int(y.size), "n_correct": int(y.sum()), "train_loss": final, "train_accuracy": acc}

    # -- inference

    def predict(self, utterances: list[Utterance], candidates: list[list[Candidate]]) -> np.ndarray:
        """P(correct) per candidate, flattened in utterance then candidate order."""
        import torch

        if self.net is None:
            raise RewardError("learned reward: the model is not trained; "
                              "call fit(...) or LearnedRewardModel.load(path)")
        x = self.features(utterances, candidates)
        with torch.no_grad():
            logits = self.net(torch.from_numpy((x - self.mean) / self.std)).squeeze(-1)
        return torch.sigmoid(logits).numpy()

    def __call__(self, utterances: list[Utterance], candidates: list[list[Candidate]]) -> list[list[float]]:
        p = self.predict(utterances, candidates).tolist()
        out, k = [], 0
        for cands in candidates:
            out.append(p[k:k + len(cands)])
            k += len(cands)
        return out

    # -- persistence (one safetensors file: weights + standardisation, config in the metadata)

    def save(self, path: str | Path) -> Path:
        import torch
        from safetensors.torch import save_file

        if self.net is None:
            raise RewardError("LearnedRewardModel.save: nothing to save; fit the model first")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"net.{k}": v.contiguous() for k, v in self.net.state_dict().items()}
        tensors["mean"], tensors["std"] = torch.from_numpy(self.mean), torch.from_numpy(self.std)
        config = {"hidden": self.hidden, "intents": self.intents[:-1], "encoder_dim": self.encoder_dim,
                  "uses_teacher": self.teacher is not None, "seed": self.seed, "features": self.feature_names}
        save_file(tensors, str(path), metadata={"config": json.dumps(config)})
        return path

    @classmethod
    def load(cls, path: str | Path, *, schema=None, teacher: RewardFn | None = None,
             encoder_features: Callable[[list[Utterance]], np.ndarray] | None = None) -> LearnedRewardModel:
        """Rebuild a saved model. Resources that are not weights (schema, teacher, encoder) are passed
        again; a model trained with teacher scores gets the default teacher when ``teacher`` is None."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise RewardError(f"learned reward model not found: {path} (train one with LearnedRewardModel.fit "
                              "and .save(path))")
        try:
            with safe_open(str(path), framework="pt") as f:
                config = json.loads((f.metadata() or {})["config"])
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
            raise RewardError(f"{path}: not a saved LearnedRewardModel ({type(e).__name__}: {e}); "
                              "re-save it with LearnedRewardModel.save") from None
        if config["uses_teacher"] and teacher is None:
            teacher = make_teacher_reward()     # the default text teacher, as at training time
        model = cls(schema=schema, teacher=teacher if config["uses_teacher"] else None,
                    encoder_features=encoder_features, use_encoder=config["encoder_dim"] > 0,
                    hidden=config["hidden"], intents=config["intents"], seed=config["seed"])
        model.encoder_dim = config["encoder_dim"]
        model.mean, model.std = tensors.pop("mean").numpy(), tensors.pop("std").numpy()
        model.net = model._build_net(len(model.mean))
        model.net.load_state_dict({k.removeprefix("net."): v for k, v in tensors.items()})
        return model


# --------------------------------------------------------------------------- combining


def _check_output(name: str, values: Any, utterances: list[Utterance], candidates: list[list[Candidate]]) -> None:
    if not hasattr(values, "__len__") or len(values) != len(candidates):
        raise RewardError(f"reward {name!r} returned {type(values).__name__} of length "
                          f"{len(values) if hasattr(values, '__len__') else '?'}; expected one list per utterance "
                          f"({len(candidates)})")
    for u, row, cands in zip(utterances, values, candidates):
        if len(row) != len(cands):
            raise RewardError(f"reward {name!r} returned {len(row)} values for utterance {u.id!r}, "
                              f"which has {len(cands)} candidates")
        for c, v in zip(cands, row):
            if not math.isfinite(float(v)):
                raise RewardError(f"reward {name!r} returned {float(v)} for utterance {u.id!r} candidate "
                                  f"{c.index} ({c.text[:60]!r}); rewards must be finite numbers")


def _check_weights(fns: Mapping[str, RewardFn], weights: Mapping[str, float]) -> None:
    if set(fns) != set(weights):
        raise RewardError(f"reward weights {sorted(weights)} must name exactly the rewards {sorted(fns)}")
    bad = {k: w for k, w in weights.items() if not isinstance(w, (int, float)) or not math.isfinite(w)}
    if bad:
        raise RewardError(f"reward weights must be finite numbers, got {bad}")


def score(utterances: list[Utterance], candidates: list[list[Candidate]],
          fns: Mapping[str, RewardFn], weights: Mapping[str, float]) -> list[list[Scored]]:
    """Run every reward once; each Scored keeps the per-reward values and their weighted sum."""
    _check_weights(fns, weights)
    check_batch(utterances, candidates, "score")
    values: dict[str, list[list[float]]] = {}
    for name, fn in fns.items():
        values[name] = fn(utterances, candidates)
        _check_output(name, values[name], utterances, candidates)
    out = []
    for i, cands in enumerate(candidates):
        row = []
        for j, c in enumerate(cands):
            parts = {name: float(values[name][i][j]) for name in fns}
            row.append(Scored(c, parts, sum(weights[n] * v for n, v in parts.items())))
        out.append(row)
    return out


class CombinedReward:
    """A weighted sum of rewards: a reward callable itself, plus ``score`` for the breakdown."""

    def __init__(self, fns: Mapping[str, RewardFn], weights: Mapping[str, float]):
        _check_weights(fns, weights)
        self.fns, self.weights = dict(fns), {k: float(v) for k, v in weights.items()}

    def score(self, utterances: list[Utterance], candidates: list[list[Candidate]]) -> list[list[Scored]]:
        return score(utterances, candidates, self.fns, self.weights)

    def __call__(self, utterances: list[Utterance], candidates: list[list[Candidate]]) -> list[list[float]]:
        return [[s.reward for s in row] for row in self.score(utterances, candidates)]

    def __repr__(self) -> str:
        return f"CombinedReward({self.weights})"


def combine_rewards(fns: Mapping[str, RewardFn], weights: Mapping[str, float]) -> CombinedReward:
    return CombinedReward(fns, weights)


def vote_reward(utterances: list[Utterance], candidates: list[list[Candidate]]) -> list[list[float]]:
    """Self-consistency, label-free, in [0, 1]: the share of the utterance's sampled draws whose frame
    (intent + slots, normalised) is this candidate's. Counts come from the sampler (``Candidate.count``),
    so repeats merged by deduplication still vote; needs N >= 16 samples to mean much."""
    check_batch(utterances, candidates, "vote")
    out = []
    for cands in candidates:
        total = sum(max(0, c.count) for c in cands)
        votes: dict = {}
        for c in cands:
            key = c.frame_key(transcript=False)
            if key is not None:
                votes[key] = votes.get(key, 0) + max(0, c.count)
        out.append([votes.get(c.frame_key(transcript=False), 0) / total if total and c.frame_key(transcript=False)
                    is not None else 0.0 for c in cands])
    return out


# --------------------------------------------------------------------------- registry


def _label(*, reveal_labels: bool = False, label_weights: Mapping[str, float] | None = None) -> RewardFn:
    return functools.partial(label_reward, reveal_labels=reveal_labels, **dict(label_weights or {}))


def _verifier(*, schema=None) -> RewardFn:
    return functools.partial(verifier_reward, schema=_schema_or_default(schema))


def _acoustic(*, length_alpha: float = 1.0) -> RewardFn:
    return functools.partial(acoustic_reward, length_alpha=length_alpha)


def _teacher(*, teacher: Any = None) -> RewardFn:
    return make_teacher_reward(teacher)


def _agreement(*, teacher: Any = None, text_weight: float = 1.0, stock_bonus: float = 0.0) -> RewardFn:
    return make_agreement_reward(teacher, text_weight, stock_bonus)


def _target_likelihood(*, target_model: Any = None, model: str = "base") -> RewardFn:
    """``model``: the stock Whisper that scores transcripts (a name: base / tiny.en, a folder or a hub id),
    loaded here unless ``target_model`` (already loaded) is given."""
    # torch and a second Whisper (and target_likelihood imports this module): only when the reward is used
    from assistant.rsft.target_likelihood import TargetLikelihood, load_target_model

    if target_model is None:
        from assistant import distributed as dist

        with dist.main_process_first():        # a model name converts into the cache once
            target_model = load_target_model(model)
    return target_model if isinstance(target_model, TargetLikelihood) else TargetLikelihood(target_model)


def _learned(*, learned_model: LearnedRewardModel | str | Path | None = None, schema=None,
             teacher: Any = None, encoder_features: Callable | None = None) -> RewardFn:
    if learned_model is None:
        raise RewardError("the 'learned' reward needs learned_model= (a fitted LearnedRewardModel, or the path "
                          "of one saved with LearnedRewardModel.save)")
    if isinstance(learned_model, LearnedRewardModel):
        return learned_model
    return LearnedRewardModel.load(learned_model, schema=schema, teacher=teacher, encoder_features=encoder_features)


# name -> factory(**resources) -> reward callable. Add an entry to make a new reward configurable.
REWARDS: dict[str, Callable[..., RewardFn]] = {
    "label": _label,
    "verifier": _verifier,
    "acoustic": _acoustic,
    "teacher": _teacher,
    "agreement": _agreement,
    "learned": _learned,
    "vote": lambda: vote_reward,
    "target_likelihood": _target_likelihood,
}


# What a reward is built from but a config never names: loaded objects the caller passes in.
RESOURCES = ("schema", "teacher", "learned_model", "encoder_features", "target_model")


def reward_specs(rewards: Mapping[str, Any]) -> dict[str, tuple[float, dict[str, Any]]]:
    """A config's ``rewards:`` -> {name: (weight, options)}. Each entry is a weight, or a mapping with a
    ``weight`` and the reward's own options (``agreement: {weight: 1.0, text_weight: 4.0}``)."""
    if not rewards:
        raise RewardError(f"no rewards selected; choose from {sorted(REWARDS)}")
    unknown = [n for n in rewards if n not in REWARDS]
    if unknown:
        raise RewardError(f"unknown reward(s) {unknown}; choose from {sorted(REWARDS)}")
    specs = {}
    for name, spec in rewards.items():
        options = dict(spec) if isinstance(spec, Mapping) else {"weight": spec}
        weight = options.pop("weight", None)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise RewardError(f"rewards.{name}: give a finite weight (a number, or a mapping with weight:), "
                              f"got {spec!r}")
        takes = sorted(set(inspect.signature(REWARDS[name]).parameters) - set(RESOURCES))
        stray = sorted(set(options) - set(takes))
        if stray:
            raise RewardError(f"rewards.{name}: unknown option(s) {stray}; it takes weight" +
                              (f" and {takes}" if takes else " only"))
        specs[name] = (float(weight), options)
    return specs


def with_reward_options(rewards: Mapping[str, Any], name: str, **options: Any) -> dict[str, Any]:
    """``rewards`` with these options set on reward ``name`` (unchanged when it is not selected)."""
    if name not in rewards:
        return dict(rewards)
    weight, current = reward_specs({name: rewards[name]})[name]
    return {**rewards, name: {"weight": weight, **current, **options}}


def build_reward_fns(rewards: Mapping[str, Any], **resources: Any) -> CombinedReward:
    """``{"verifier": 1.0, "acoustic": {"weight": 0.1, "length_alpha": 0.5}}`` -> CombinedReward. Each
    factory receives the options its entry gives and the resources its signature names (schema, teacher,
    learned_model, encoder_features, target_model, or an option's value for every reward that takes it);
    a resource no registered reward accepts is an error (a typo)."""
    specs = reward_specs(rewards)
    params = {name: set(inspect.signature(f).parameters) for name, f in REWARDS.items()}
    accepted = set().union(*params.values())
    stray = sorted(set(resources) - accepted)
    if stray:
        raise RewardError(f"unknown reward resource(s) {stray}; the rewards accept {sorted(accepted)}")
    fns = {name: REWARDS[name](**{**{k: v for k, v in resources.items() if k in params[name]}, **options})
           for name, (_, options) in specs.items()}
    return CombinedReward(fns, {name: weight for name, (weight, _) in specs.items()})
