"""The ``target_likelihood`` reward: how well a candidate's transcript explains the audio under an
independent, stronger speech model (the seed's "target-likelihood model").

    reward = log p_target(transcript | audio) / (tokens + 1)

The target model is a *stock* Whisper (``SLUModel.from_pretrained("base")``, adapters off if it has
any) reading the clip through its own 30 s window (``SLUModel.stock_encode``: what stock Whisper hears)
and scoring the transcript behind its plain transcription prompt over the full vocabulary, written the
way Whisper writes (``stock_style``: capital first letter, final stop). The encoder runs once per
utterance; each distinct transcript of the utterance is scored once. Length normalisation keeps a
short, wrong transcript from beating a long, right one.

It hears the audio, but not the frame: candidates with the same transcript get the same reward, and a
candidate with no well-formed frame gets the utterance's lowest reward minus one nat (finite, as every
reward must be). Whisper writes numbers as digits where our transcripts spell them, so a spelled number
costs a little under every candidate alike: the reward compares transcripts *within* an utterance.
"""

from __future__ import annotations

from typing import Sequence

import torch

from assistant.audio import AudioError, load_audio
from assistant.data.manifest import Utterance
from assistant.model.losses import stock_style
from assistant.model.slu import SLUModel
from assistant.rsft.rewards import check_batch
from assistant.rsft.types import Candidate

NO_FRAME_PENALTY = 1.0      # nats below the utterance's worst scored transcript


class TargetLikelihood:
    """``reward(utterances, candidates) -> [[float]]``; ``model``: an ``SLUModel`` whose stock prompt is the
    pretrained checkpoint (a stock folder, or a fine-tuned one with adapters: they are switched off)."""

    def __init__(self, model, batch_size: int = 8, context_seconds: float = 30.0):
        self.model = model.eval()
        self.batch_size = batch_size
        self.context_seconds = context_seconds

    def _waves(self, utterances: Sequence[Utterance]) -> list[torch.Tensor]:
        waves = []
        for u in utterances:
            try:
                waves.append(load_audio(u.audio, max_seconds=self.context_seconds))
            except AudioError:
                waves.append(torch.zeros(1600))     # every candidate of a broken clip scores alike
        return waves

    @torch.no_grad()
    def transcript_logprobs(self, waves: Sequence[torch.Tensor], transcripts: Sequence[Sequence[str]]
                            ) -> list[list[float]]:
        """Per-token mean log-prob of each transcript (stock-styled) given its clip; ``transcripts[i]``
        are clip i's texts."""
        model = self.model
        enc = model.stock_encode(waves, context_seconds=self.context_seconds)
        texts = [stock_style(t) for ts in transcripts for t in ts]
        rows = torch.tensor([i for i, ts in enumerate(transcripts) for _ in ts], dtype=torch.long)
        if not texts:
            return [[] for _ in transcripts]
        seqs = model.tokenize(texts)
        with model.stock():
            picked, mask = model.token_logprobs(enc.index_select(0, rows.to(enc.device)), seqs, texts, asr=True)
        per_token = (picked.sum(dim=1) / mask.sum(dim=1)).tolist()
        out, k = [], 0
        for ts in transcripts:
            out.append(per_token[k:k + len(ts)])
            k += len(ts)
        return out

    def __call__(self, utterances: list[Utterance], candidates: list[list[Candidate]]) -> list[list[float]]:
        check_batch(utterances, candidates, "target_likelihood")
        out: list[list[float]] = []
        for start in range(0, len(utterances), self.batch_size):
            us, cs = utterances[start:start + self.batch_size], candidates[start:start + self.batch_size]
            distinct = [sorted({c.frame.transcript for c in cands if c.frame is not None}) for cands in cs]
            scores = self.transcript_logprobs(self._waves(us), distinct)
            for cands, ts, lps in zip(cs, distinct, scores):
                by_text = dict(zip(ts, lps))
                floor = (min(lps) if lps else 0.0) - NO_FRAME_PENALTY
                out.append([by_text[c.frame.transcript] if c.frame is not None else floor for c in cands])
        return out


def load_target_model(name_or_dir: str):
    """The target model by name ("base", "tiny.en"), folder or hub id. It only reads behind the stock prompt
    over the full vocabulary, so it needs no domain output vocabulary."""
    return SLUModel.from_pretrained(name_or_dir)
