"""Second pass: the text NLU model re-reads the decoded transcript and may correct the frame.

The speech model writes ``transcript | intent | slots`` in one pass. Its reading of the words generalises
only as far as the phrasings it was fine-tuned on (a few thousand clips); the text teacher
(``assistant.nlu.model``, MiniLM pretrained on a billion sentence pairs, fine-tuned on the grammar's
text) reads phrasings it never saw far better. So for each clip two frames for the same transcript are
compared — the speech model's own and the text model's reading of that transcript — by

    score(frame) = log p_speech(frame | audio) + weight * log p_text(intent, slots | transcript)

and the higher one wins (``weight`` is picked on dev: ``choose_weight``, or ``assistant.nlu.selection``,
which keeps weight 1 unless dev clearly prefers another). Weight 0 is the speech model alone. Two more kinds
of reading can join (each kept only if dev says so): the text model's reading of
*stock* Whisper's transcript (``stock_bonus``), and an **n-best**: ``samples`` frames sampled from the
speech model, each with the text model's reading of its transcript. Most intent errors follow a misheard
word; another sampled transcript often holds the right one, and the same score picks it (as an ASR n-best
is rescored with a language model).

A model folder with an ``nlu/`` subfolder (a saved teacher + ``nlu.json``) gets this pass when loaded with
``assistant.nlu.load_pipeline``; ``attach`` writes it.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from assistant.audio import AudioError, load_audio
from assistant.frames import Frame, format_frame
from assistant.model.interface import SpeechModel
from assistant.nlu.model import TeacherError, TextTeacher
from assistant.text import normalize_text

NLU_DIR = "nlu"
NLU_FILE = "nlu.json"
WEIGHTS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 64.0)   # tried on dev by choose_weight


class NluError(ValueError):
    """An nlu/ folder that cannot be used; the message names it and the fix."""


READERS = ("speech", "text", "stock", "sample", "sample text")   # whose reading a chosen frame is
STOCK_BONUSES = (-math.inf, -8.0, -4.0, -2.0, 0.0, 2.0, 4.0, 8.0, 16.0, 32.0, math.inf)   # tried on dev


@dataclass(frozen=True)
class Hypothesis:
    """An n-best reading of a clip: a sampled frame ("sample") or the text model's reading of a sampled
    transcript ("sample text"), with its two scores."""
    frame: Frame
    speech_lp: float
    text_lp: float
    reader: str


@dataclass
class Readings:
    """Up to three readings of each clip and their scores, and the n-best's (``samples``).

    Columns: 0 the speech model's frame, 1 the text model's reading of the speech model's transcript,
    2 the text model's reading of the *stock* transcript (the pretrained Whisper, adapters off). Scores
    of a reading that does not exist are ignored."""
    speech: list[Frame | None]        # the speech model's frame (None: its output did not parse)
    text: list[Frame | None]          # the text model's frame for the same transcript
    speech_lp: np.ndarray             # [n, 3] log p_speech(frame line | audio) of each reading
    text_lp: np.ndarray               # [n, 3] log p_text(intent, slots | the reading's transcript)
    stock: list[Frame | None] | None = None   # the text model's frame for the stock transcript
    samples: list[list[Hypothesis]] | None = None   # per clip, the n-best's other readings (None: greedy only)

    def __post_init__(self) -> None:
        n = len(self.speech)
        if self.stock is None:
            self.stock = [None] * n
        pad = lambda a: np.concatenate([a, np.zeros((n, 3 - a.shape[1]))], axis=1) if a.shape[1] < 3 else a
        self.speech_lp, self.text_lp = pad(np.asarray(self.speech_lp, float)), pad(np.asarray(self.text_lp, float))

    def choose(self, weight: float, stock_bonus: float = -math.inf, samples: bool = True
               ) -> tuple[list[Frame | None], list[str]]:
        """The winning frame per clip and whose reading it is (READERS).

        score = log p_speech + weight * log p_text (+ stock_bonus for the stock reading); ties keep the
        earlier reader. stock_bonus -inf never uses the stock reading, +inf always does when it exists.
        The text reading of the speech transcript needs a valid speech frame; the stock reading and the
        n-best's (``samples``: whether to use them) do not (they rescue clips whose output did not parse)."""
        total = self.speech_lp + weight * self.text_lp
        frames, readers = [], []
        for i in range(len(self.speech)):
            options = self._options(i, total[i], weight, stock_bonus, samples)
            if not options:
                frames.append(None)
                readers.append("speech")
                continue
            _, col, frame = max(options, key=lambda o: (o[0], -o[1]))
            frames.append(frame)
            readers.append(READERS[col])
        return frames, readers

    def _options(self, i: int, total: np.ndarray, weight: float, stock_bonus: float, samples: bool) -> list:
        """(score, reader column, frame) of clip i's readings."""
        s, t, k = self.speech[i], self.text[i], self.stock[i]
        if k is not None and stock_bonus == math.inf:
            return [(total[2], 2, k)]
        options = [(total[0], 0, s)] if s is not None else []
        if t is not None and s is not None:
            options.append((total[1], 1, t))
        if k is not None and stock_bonus > -math.inf:
            options.append((total[2] + stock_bonus, 2, k))
        if samples and self.samples is not None:
            options += [(h.speech_lp + weight * h.text_lp, READERS.index(h.reader), h.frame) for h in self.samples[i]]
        return options


def _finite(values: np.ndarray) -> np.ndarray:
    """A reading the speech model cannot spell (-inf) must never win on its speech score."""
    return np.where(np.isfinite(values), values, -1e9)


class NluPass:
    """The text second pass: a teacher and the weight / stock bonus its choice uses (see ``Readings.choose``);
    ``samples``: frames sampled from the speech model per clip for the n-best (0: the greedy frame only),
    drawn with ``seed`` (the same clips give the same answer)."""

    def __init__(self, teacher, weight: float = 1.0, stock_bonus: float = -math.inf, samples: int = 0, seed: int = 0):
        if not weight >= 0:
            raise NluError(f"nlu weight must be >= 0, got {weight}")
        if math.isnan(stock_bonus):
            raise NluError("nlu stock_bonus must be a number or +-inf, got nan")
        if not (isinstance(samples, int) and samples >= 0):
            raise NluError(f"nlu samples must be an integer >= 0 (0: greedy only), got {samples!r}")
        self.teacher = teacher
        self.weight = float(weight)
        self.stock_bonus = float(stock_bonus)
        self.samples = samples
        self.seed = int(seed)

    @property
    def uses_stock(self) -> bool:
        """Whether the deployed choice can pick the stock reading (then inference decodes it)."""
        return self.stock_bonus > -math.inf

    def decode(self, model: SpeechModel, enc, max_new_tokens: int = 96) -> tuple[list, list[list] | None]:
        """The speech model's greedy candidate per clip and, with ``samples``, the other distinct sampled
        candidates (None without): what ``readings`` reads."""
        cands = model.generate(enc, num_samples=self.samples, greedy=True, max_new_tokens=max_new_tokens,
                               seed=self.seed if self.samples else None)
        return [c[0] for c in cands], ([c[1:] for c in cands] if self.samples else None)

    @torch.no_grad()
    def readings(self, model: SpeechModel, enc, frames: Sequence[Frame | None],
                 stock_transcripts: Sequence[str] | None = None, sampled: Sequence[Sequence] | None = None
                 ) -> Readings:
        """Score the readings; ``enc`` holds the clips' encoder states (row i = frames[i]);
        ``stock_transcripts`` (optional) the stock Whisper transcript of each clip; ``sampled`` (optional)
        each clip's other sampled candidates (``decode``), read as the n-best."""
        n = len(frames)
        text: list[Frame | None] = [None] * n
        stock: list[Frame | None] = [None] * n
        speech_lp = np.zeros((n, 3))
        text_lp = np.zeros((n, 3))
        idx = [i for i, f in enumerate(frames) if f is not None]
        if idx:
            read = self.teacher.read([frames[i].transcript for i in idx], [frames[i].intent for i in idx],
                                     [frames[i].slots for i in idx])
            for i, (intent, slots, own_ll, given_ll) in zip(idx, read):
                text[i] = Frame(intent=intent, slots=dict(slots), transcript=frames[i].transcript)
                text_lp[i, :2] = given_ll, own_ll
            # The speech model scores the text reading only where it differs from its own.
            differ = [i for i in idx if (text[i].intent, text[i].slots) != (frames[i].intent, dict(frames[i].slots))]
            own = model.sequence_logprobs(enc, [format_frame(frames[i]) for i in idx], expand=idx).cpu().numpy()
            speech_lp[idx, 0] = speech_lp[idx, 1] = own
            if differ:
                speech_lp[differ, 1] = model.sequence_logprobs(enc, [format_frame(text[i]) for i in differ],
                                                               expand=differ).cpu().numpy()
        if stock_transcripts is not None:
            heard = [(i, normalize_text(t)) for i, t in enumerate(stock_transcripts) if normalize_text(t)]
            if heard:
                rows = [i for i, _ in heard]
                for (i, words), (intent, slots, confidence) in zip(heard, self.teacher.predict([w for _, w in heard])):
                    stock[i] = Frame(intent=intent, slots=dict(slots), transcript=words)
                    text_lp[i, 2] = math.log(max(confidence, 1e-300))
                speech_lp[rows, 2] = model.sequence_logprobs(enc, [format_frame(stock[i]) for i in rows],
                                                             expand=rows).cpu().numpy()
        hypotheses = None if sampled is None else self._hypotheses(model, enc, frames, text, sampled)
        return Readings(list(frames), text, _finite(speech_lp), text_lp, stock, hypotheses)

    def _hypotheses(self, model: SpeechModel, enc, frames: Sequence[Frame | None], text: Sequence[Frame | None],
                    sampled: Sequence[Sequence]) -> list[list[Hypothesis]]:
        """Each clip's distinct sampled frames and the text model's reading of each sampled transcript (none
        that repeats the greedy frame or its text reading), scored like the greedy ones."""
        taken = [{format_frame(f) for f in (s, t) if f is not None} for s, t in zip(frames, text)]
        spoken = []                                   # (clip, sampled frame)
        for i, cands in enumerate(sampled):
            for c in cands:
                if c.frame is not None and format_frame(c.frame) not in taken[i]:
                    taken[i].add(format_frame(c.frame))
                    spoken.append((i, c.frame))
        if not spoken:
            return [[] for _ in frames]
        found = []                                    # (clip, frame, text log-prob, reader)
        read_transcripts = {(i, f.transcript) for i, f in enumerate(frames) if f is not None}
        for (i, f), (intent, slots, own_ll, given_ll) in zip(spoken, self.teacher.read(
                [f.transcript for _, f in spoken], [f.intent for _, f in spoken], [f.slots for _, f in spoken])):
            found.append((i, f, given_ll, "sample"))
            reading = Frame(intent=intent, slots=dict(slots), transcript=f.transcript)
            if (i, f.transcript) not in read_transcripts and format_frame(reading) not in taken[i]:
                read_transcripts.add((i, f.transcript))
                taken[i].add(format_frame(reading))
                found.append((i, reading, own_ll, "sample text"))
        speech = _finite(model.sequence_logprobs(enc, [format_frame(f) for _, f, _, _ in found],
                                                 expand=[i for i, _, _, _ in found]).cpu().numpy())
        out: list[list[Hypothesis]] = [[] for _ in frames]
        for (i, f, text_lp, reader), speech_lp in zip(found, speech):
            out[i].append(Hypothesis(f, float(speech_lp), float(text_lp), reader))
        return out

    def apply(self, model: SpeechModel, enc, frames: Sequence[Frame | None],
              stock_transcripts: Sequence[str] | None = None) -> tuple[list[Frame | None], list[str]]:
        return self.readings(model, enc, frames, stock_transcripts).choose(self.weight, self.stock_bonus)

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | Path) -> Path:
        """Write ``<model folder>/nlu/`` (teacher weights + nlu.json)."""
        target = Path(folder) / NLU_DIR
        tmp = target.with_name(NLU_DIR + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.teacher.save(tmp)
        meta = {"weight": self.weight, **({"stock_bonus": str(self.stock_bonus)} if self.uses_stock else {}),
                **({"samples": self.samples, "seed": self.seed} if self.samples else {})}
        (tmp / NLU_FILE).write_text(json.dumps(meta, indent=1))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        return target

    @classmethod
    def load(cls, folder: str | Path) -> "NluPass":
        """The pass saved in ``folder`` (a model folder's ``nlu/``); NluError names the file and the fix."""
        folder = Path(folder)
        meta = folder / NLU_FILE
        fix = f"delete {folder} (the model then runs without the text pass) or rerun `assistant run`"
        try:
            saved = json.loads(meta.read_text())
            weight = float(saved["weight"])
            stock_bonus = float(saved.get("stock_bonus", "-inf"))
            samples = saved.get("samples", 0)
            if not isinstance(samples, int) or samples < 0:
                raise ValueError(f"samples {samples!r} is not an integer >= 0")
            seed = int(saved.get("seed", 0))
        except FileNotFoundError:
            raise NluError(f"{meta} not found; {fix}") from None
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise NluError(f"{meta}: unreadable ({e}); {fix}") from None
        try:
            return cls(TextTeacher.load(folder), weight, stock_bonus, samples, seed)
        except TeacherError as e:
            raise NluError(f"{e}") from None


def attach(model_folder: str | Path, teacher, weight: float, stock_bonus: float = -math.inf, samples: int = 0,
           seed: int = 0) -> Path:
    """Give a saved SLU model folder the text second pass."""
    return NluPass(teacher, weight, stock_bonus, samples, seed).save(model_folder)


def grid_correct(readings: Readings, gold_intents: Sequence[str], weights: Sequence[float] = WEIGHTS,
                 stock_bonuses: Sequence[float] = (-math.inf,), samples: bool = True
                 ) -> dict[tuple[float, float], np.ndarray]:
    """Whether each clip's chosen frame has the gold intent, for every (weight, stock_bonus): the per-clip
    record a choice rule (``assistant.nlu.selection``) compares choices on."""
    correct = {}
    for b in stock_bonuses:
        for w in weights:
            frames, _ = readings.choose(w, b, samples)
            correct[(w, b)] = np.array([f is not None and f.intent == g for f, g in zip(frames, gold_intents)])
    return correct


def choose_weight(readings: Readings, gold_intents: Sequence[str], weights: Sequence[float] = WEIGHTS,
                  stock_bonuses: Sequence[float] = (-math.inf,), samples: bool = True
                  ) -> tuple[tuple[float, float], dict[tuple[float, float], float]]:
    """The (weight, stock_bonus) with the best intent accuracy on (dev) readings (``samples``: with the
    n-best's readings, when the readings have them).

    Ties go to the stock bonus nearest to "never" (-inf first), then to the smaller weight."""
    accuracy = {wb: float(c.mean()) for wb, c in grid_correct(readings, gold_intents, weights, stock_bonuses,
                                                              samples).items()}
    rank = {b: i for i, b in enumerate(sorted(stock_bonuses))}
    best = max(accuracy, key=lambda wb: (accuracy[wb], -rank[wb[1]], -wb[0]))
    return best, accuracy


def _load_batch(model: SpeechModel, utterances) -> list[torch.Tensor]:
    waves = []
    for u in utterances:
        try:
            waves.append(load_audio(u.audio, max_seconds=model.context_seconds))
        except AudioError:
            waves.append(torch.zeros(1600))       # scored as a miss, keeps rows aligned with the golds
    return waves


@torch.no_grad()
def stock_transcripts(model: SpeechModel, utterances, batch_size: int = 16, desc: str = "stock transcripts") -> list[str]:
    """Stock Whisper's greedy transcript of each clip (``SLUModel.stock_encode`` + ``stock_greedy``):
    independent of the fine-tuning, so one list serves every speech model of a run and the peer."""
    out: list[str] = []
    for start in tqdm(range(0, len(utterances), batch_size), desc=desc, unit="batch", disable=None):
        out += model.stock_greedy(model.stock_encode(_load_batch(model, utterances[start:start + batch_size])))
    return out


@torch.no_grad()
def dev_readings(model: SpeechModel, utterances, nlu: NluPass, batch_size: int = 16, desc: str = "nlu: dev readings",
                 stock: Sequence[str] | None = None) -> Readings:
    """Decode the utterances once as ``nlu`` would (greedy, plus its n-best samples) and score the readings
    of each (for ``choose_weight``); ``stock``: the clips' stock transcripts (``stock_transcripts``) to add
    the stock reading."""
    parts: list[Readings] = []
    for start in tqdm(range(0, len(utterances), batch_size), desc=desc, unit="batch", disable=None):
        waves = _load_batch(model, utterances[start:start + batch_size])
        enc = model.encode(model.features(waves))
        greedy, sampled = nlu.decode(model, enc)
        parts.append(nlu.readings(model, enc, [c.frame for c in greedy],
                                  None if stock is None else stock[start:start + batch_size], sampled))
    return Readings([f for p in parts for f in p.speech], [f for p in parts for f in p.text],
                    np.concatenate([p.speech_lp for p in parts]), np.concatenate([p.text_lp for p in parts]),
                    [f for p in parts for f in p.stock],
                    None if nlu.samples == 0 else [h for p in parts for h in p.samples])
