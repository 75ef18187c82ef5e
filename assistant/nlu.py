"""Second pass: the text NLU model re-reads the decoded transcript and may correct the frame.

The speech model writes ``transcript | intent | slots`` in one pass. Its reading of the words generalises
only as far as the phrasings it was fine-tuned on (a few thousand clips); the text teacher
(``assistant.rsft.teacher``, MiniLM pretrained on a billion sentence pairs, fine-tuned on the grammar's
text) reads phrasings it never saw far better. So for each clip two frames for the same transcript are
compared — the speech model's own and the text model's reading of that transcript — by

    score(frame) = log p_speech(frame | audio) + weight * log p_text(intent, slots | transcript)

and the higher one wins (``weight`` is picked on dev by ``choose_weight``). The transcript is always the
speech model's; weight 0 is the speech model alone.

A model folder with an ``nlu/`` subfolder (a saved teacher + ``nlu.json``) gets this pass automatically
when loaded with ``SLUModel.from_pretrained``; ``attach`` writes it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from assistant.frames import Frame, format_frame

NLU_DIR = "nlu"
NLU_FILE = "nlu.json"
WEIGHTS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 64.0)   # tried on dev by choose_weight


class NluError(ValueError):
    """An nlu/ folder that cannot be used; the message names it and the fix."""


@dataclass
class Readings:
    """Both readings of each clip's transcript and their scores under both models."""
    speech: list[Frame | None]        # the speech model's frame (None: its output did not parse)
    text: list[Frame | None]          # the text model's frame for the same transcript
    speech_lp: np.ndarray             # [n, 2] log p_speech of (speech frame, text frame)
    text_lp: np.ndarray               # [n, 2] log p_text of (speech frame, text frame)

    def choose(self, weight: float) -> tuple[list[Frame | None], list[bool]]:
        """The winning frame per clip and whether it is the text model's."""
        total = self.speech_lp + weight * self.text_lp
        frames, from_text = [], []
        for i, (s, t) in enumerate(zip(self.speech, self.text)):
            use_text = t is not None and s is not None and bool(total[i, 1] > total[i, 0])
            frames.append(t if use_text else s)
            from_text.append(use_text)
        return frames, from_text


class NluPass:
    def __init__(self, teacher, weight: float = 1.0):
        if not weight >= 0:
            raise NluError(f"nlu weight must be >= 0, got {weight}")
        self.teacher = teacher
        self.weight = float(weight)

    @torch.no_grad()
    def readings(self, model, enc: torch.Tensor, frames: Sequence[Frame | None]) -> Readings:
        """Score both readings; ``enc`` holds the clips' encoder states (row i = frames[i])."""
        n = len(frames)
        text: list[Frame | None] = [None] * n
        speech_lp = np.zeros((n, 2))
        text_lp = np.zeros((n, 2))
        idx = [i for i, f in enumerate(frames) if f is not None]
        if not idx:
            return Readings(list(frames), text, speech_lp, text_lp)
        read = self.teacher.read([frames[i].transcript for i in idx], [frames[i].intent for i in idx],
                                 [frames[i].slots for i in idx])
        for i, (intent, slots, own_ll, given_ll) in zip(idx, read):
            text[i] = Frame(intent=intent, slots=dict(slots), transcript=frames[i].transcript)
            text_lp[i] = given_ll, own_ll
        # The speech model scores the text reading only where it differs from its own.
        differ = [i for i in idx if (text[i].intent, text[i].slots) != (frames[i].intent, dict(frames[i].slots))]
        own = model.sequence_logprobs(enc, [format_frame(frames[i]) for i in idx], expand=idx).cpu().numpy()
        speech_lp[idx, 0] = speech_lp[idx, 1] = own
        if differ:
            speech_lp[differ, 1] = model.sequence_logprobs(enc, [format_frame(text[i]) for i in differ],
                                                           expand=differ).cpu().numpy()
        # A reading the speech model cannot spell (-inf) must never win over its own.
        speech_lp = np.where(np.isfinite(speech_lp), speech_lp, -1e9)
        return Readings(list(frames), text, speech_lp, text_lp)

    def apply(self, model, enc: torch.Tensor, frames: Sequence[Frame | None]) -> tuple[list[Frame | None], list[bool]]:
        return self.readings(model, enc, frames).choose(self.weight)

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | Path) -> Path:
        """Write ``<model folder>/nlu/`` (teacher weights + nlu.json)."""
        target = Path(folder) / NLU_DIR
        tmp = target.with_name(NLU_DIR + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.teacher.save(tmp)
        (tmp / NLU_FILE).write_text(json.dumps({"weight": self.weight}, indent=1))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        return target

    @classmethod
    def load(cls, folder: str | Path) -> "NluPass":
        from assistant.rsft.teacher import TeacherError, TextTeacher

        folder = Path(folder)
        meta = folder / NLU_FILE
        fix = f"delete {folder} (the model then runs without the text pass) or rerun `assistant run`"
        try:
            weight = float(json.loads(meta.read_text())["weight"])
        except FileNotFoundError:
            raise NluError(f"{meta} not found; {fix}") from None
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise NluError(f"{meta}: unreadable ({e}); {fix}") from None
        try:
            return cls(TextTeacher.load(folder), weight)
        except TeacherError as e:
            raise NluError(f"{e}") from None


def attach(model_folder: str | Path, teacher, weight: float) -> Path:
    """Give a saved SLU model folder the text second pass."""
    return NluPass(teacher, weight).save(model_folder)


def choose_weight(readings: Readings, gold_intents: Sequence[str], weights: Sequence[float] = WEIGHTS
                  ) -> tuple[float, dict[float, float]]:
    """The weight with the best intent accuracy on (dev) readings; ties go to the smaller weight."""
    accuracy = {}
    for w in weights:
        frames, _ = readings.choose(w)
        accuracy[w] = float(np.mean([f is not None and f.intent == g for f, g in zip(frames, gold_intents)]))
    best = max(weights, key=lambda w: (accuracy[w], -w))
    return best, accuracy


@torch.no_grad()
def dev_readings(model, utterances, nlu: NluPass, batch_size: int = 16, desc: str = "nlu: dev readings") -> Readings:
    """Greedy-decode the utterances once and score both readings of each (for ``choose_weight``)."""
    from tqdm import tqdm

    from assistant.audio import AudioError, load_audio
    from assistant.frames import parse_frame

    parts: list[Readings] = []
    for start in tqdm(range(0, len(utterances), batch_size), desc=desc, unit="batch", disable=None):
        waves = []
        for u in utterances[start:start + batch_size]:
            try:
                waves.append(load_audio(u.audio, max_seconds=model.context_seconds))
            except AudioError:
                waves.append(torch.zeros(1600))       # scored as a miss, keeps rows aligned with the golds
        enc = model.encode(model.features(waves))
        frames = []
        for cands in model.generate(enc, num_samples=0, greedy=True):
            parsed = parse_frame(cands[0].text)
            frames.append(parsed.frame if parsed.valid and cands[0].finished else None)
        parts.append(nlu.readings(model, enc, frames))
    return Readings([f for p in parts for f in p.speech], [f for p in parts for f in p.text],
                    np.concatenate([p.speech_lp for p in parts]), np.concatenate([p.text_lp for p in parts]))
