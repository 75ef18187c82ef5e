"""The restricted output vocabulary of the SLU decoder.

Why: Whisper's output layer is a 51,864-way softmax, by far the most expensive part of a tiny decoder
step. The SLU decoder only ever needs to write frame strings of one domain (intent names, slot names,
slot values, transcripts of commands), which use ~1-2k distinct BPE tokens. ``OutputVocab`` is that
sorted token-id subset; the SLU head multiplies hidden states by the matching rows of ``proj_out`` only
(in the training loss and in generation). Target tokens outside the subset are an error at build time,
never silently dropped.

Texts are tokenised exactly as the decoder sees them: with one leading space, like Whisper transcripts
(``text_token_ids``). The subset always holds <|endoftext|> plus a robustness set (letters, digits,
number words, frequent English words, punctuation), so an out-of-domain utterance can still be
transcribed approximately.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

VOCAB_FILE = "vocab.json"

# Frequent English words + number words: lets the decoder spell unexpected commands approximately.
COMMON_WORDS = """
a about above after again against all am an and any are as at back be because been before being below
between both but by can could did do does doing down during each few for from further get go going had
has have having he her here hers him his how i if in into is it its just know like make me more most my
no nor not now of off on once only or other our out over own please right same say she should so some
still such take tell than thank thanks that the their them then there these they this those through time
to too turn under until up very want was we were what when where which while who whom why will with
would you your yes okay ok hey hi hello set play stop start show find call send open close put give
remove add delete cancel check create change switch bring make read today tomorrow tonight yesterday
morning afternoon evening night week weekend month year day days hour hours minute minutes second
seconds monday tuesday wednesday thursday friday saturday sunday january february march april may june
july august september october november december am pm a m p m oclock o'clock half quarter past noon
midnight zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen
sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred
thousand million first second third fourth fifth sixth seventh eighth ninth tenth percent degrees
lights light lamp music song volume temperature heat heating weather alarm timer reminder list lists
calendar meeting event news email message room kitchen bedroom bathroom washroom living house home
up down louder quieter higher lower increase decrease raise reduce on off
""".split()
LETTERS = list("abcdefghijklmnopqrstuvwxyz")
DIGITS = list("0123456789")
PUNCTUATION = list(".,?!'-:;=|_") + [" |", " ;", " =", " _", "'s", "n't"]


def text_token_ids(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` as the decoder writes it: one leading space, no special tokens."""
    return list(tokenizer.encode(" " + " ".join(str(text).split()), add_special_tokens=False))


def batch_text_token_ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    if not texts:
        return []
    enc = tokenizer([" " + " ".join(str(t).split()) for t in texts], add_special_tokens=False)
    return [list(ids) for ids in enc["input_ids"]]


def robustness_texts() -> list[str]:
    """Words/characters always in the vocabulary (word-initial forms; ``from_texts`` adds word-internal ones)."""
    return COMMON_WORDS + LETTERS + DIGITS + PUNCTUATION


class OutputVocab:
    """A sorted subset of the tokenizer's ids; position in the subset = index of the restricted logit."""

    def __init__(self, token_ids: Iterable[int], vocab_size: int, eot_id: int):
        ids = sorted({int(i) for i in token_ids} | {int(eot_id)})
        if ids[0] < 0 or ids[-1] >= vocab_size:
            raise ValueError(f"output vocabulary ids must lie in [0, {vocab_size}), got {ids[0]}..{ids[-1]}")
        self.vocab_size = int(vocab_size)
        self.eot_id = int(eot_id)
        self.ids = torch.tensor(ids, dtype=torch.long)
        self.index_of = torch.full((vocab_size,), -1, dtype=torch.long)
        self.index_of[self.ids] = torch.arange(len(ids))
        self._id_set = frozenset(ids)  # fast membership checks in Python loops

    # ------------------------------------------------------------------ building
    @classmethod
    def from_texts(cls, texts: Iterable[str], tokenizer, vocab_size: int | None = None,
                   robust: bool = True) -> "OutputVocab":
        """Every token of every text (tokenised as the decoder sees it) + <|endoftext|> (+ robustness set)."""
        texts = [str(t) for t in texts]
        if robust:
            texts += robustness_texts()
        ids: set[int] = set()
        for chunk in _chunks(texts, 4096):
            for seq in batch_text_token_ids(tokenizer, chunk):
                ids.update(seq)
        # Word-internal forms of the robustness set (no leading space), for spelling things out.
        if robust:
            for w in COMMON_WORDS + LETTERS + DIGITS + PUNCTUATION:
                ids.update(tokenizer.encode(w, add_special_tokens=False))
        return cls(ids, vocab_size or len(tokenizer), tokenizer.convert_tokens_to_ids("<|endoftext|>"))

    @classmethod
    def full(cls, vocab_size: int, eot_id: int) -> "OutputVocab":
        """No restriction (every id): the SLU head then computes the full softmax."""
        return cls(range(vocab_size), vocab_size, eot_id)

    def union(self, other: "OutputVocab") -> "OutputVocab":
        if other.vocab_size != self.vocab_size:
            raise ValueError(f"cannot merge vocabularies of sizes {self.vocab_size} and {other.vocab_size}")
        return OutputVocab(self.ids.tolist() + other.ids.tolist(), self.vocab_size, self.eot_id)

    # ------------------------------------------------------------------ mapping
    def __len__(self) -> int:
        return int(self.ids.numel())

    def __contains__(self, token_id: int) -> bool:
        return int(token_id) in self._id_set

    @property
    def is_full(self) -> bool:
        return len(self) == self.vocab_size

    @property
    def eot_index(self) -> int:
        return int(self.index_of[self.eot_id])

    def missing(self, token_ids: Iterable[int]) -> list[int]:
        return sorted({int(t) for t in token_ids} - self._id_set)

    def to_subset(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary ids -> subset indices (-1 where outside the subset)."""
        return self.index_of.to(token_ids.device)[token_ids]

    def to_full(self, subset_index: torch.Tensor) -> torch.Tensor:
        return self.ids.to(subset_index.device)[subset_index]

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        return {"format": 1, "vocab_size": self.vocab_size, "eot_id": self.eot_id, "token_ids": self.ids.tolist()}

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / VOCAB_FILE
        path.write_text(json.dumps(self.to_dict()))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "OutputVocab":
        path = Path(folder)
        path = path / VOCAB_FILE if path.is_dir() else path
        try:
            d = json.loads(path.read_text())
            return cls(d["token_ids"], d["vocab_size"], d["eot_id"])
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: missing; the folder was not written by "
                                    "SLUModel.save_pretrained") from None
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not a valid output vocabulary ({e}); re-save the model") from None


def _chunks(items: list, n: int):
    for i in range(0, len(items), n):
        yield items[i:i + n]
