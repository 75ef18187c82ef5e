"""Teacher forcing: the training losses and the sequence scores of ``SLUModel``.

SLU targets are frame strings behind the SLU prompt, scored over the restricted output vocabulary
(``OutputVocab``; a target token outside it raises a ValueError); the ASR loss scores plain transcripts
behind the stock prompt over the full vocabulary, so fine-tuning keeps Whisper's transcription mode.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F


def stock_style(text: str) -> str:
    """'turn up the heat' -> 'Turn up the heat.': the casing and final stop stock Whisper emits."""
    text = " ".join(str(text).split())
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".?!" else text + "."


class TeacherForcing:
    """``loss`` / ``asr_loss`` / ``token_nll`` / ``token_logprobs`` / ``sequence_logprobs`` of ``SLUModel``."""

    def _check_targets(self, token_seqs: list[list[int]], texts: Sequence | None, max_len: int, asr: bool) -> None:
        for i, seq in enumerate(token_seqs):
            bad = [] if asr else self.vocab.missing(seq)
            if bad:
                what = repr(texts[i]) if texts is not None else f"sequence {i}"
                pieces = self.tokenizer.convert_ids_to_tokens(bad)
                raise ValueError(f"target {what} uses tokens outside the output vocabulary: {pieces}; "
                                 "build the model with output_vocab including this text")
            if len(seq) + 1 > max_len:
                raise ValueError(f"target {texts[i] if texts is not None else i!r} is {len(seq)} tokens; "
                                 f"the decoder holds at most {max_len - 1}")

    def _targets(self, token_seqs: list[list[int]], texts: Sequence | None = None, asr: bool = False):
        """Decoder inputs [N, P+L], targets [N, L+1] and mask, for sequences ending in <|endoftext|>.

        SLU targets are indices into the restricted vocabulary behind the SLU prompt; ``asr=True`` gives
        full-vocabulary token ids behind the stock transcription prompt."""
        prompt = self.asr_prefix if asr else self.slu_prefix
        self._check_targets(token_seqs, texts, self.config.max_target_positions - len(prompt), asr)
        length = max(len(s) for s in token_seqs) + 1
        n = len(token_seqs)
        full = torch.full((n, length), self.eot_id, dtype=torch.long)
        mask = torch.zeros((n, length), dtype=torch.bool)
        for i, seq in enumerate(token_seqs):
            full[i, :len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[i, :len(seq) + 1] = True
        prefix = torch.tensor(prompt, dtype=torch.long).expand(n, -1)
        inputs = torch.cat([prefix, full[:, :-1]], dim=1)
        targets = full if asr else self.vocab_index_of.cpu()[full]
        return inputs.to(self.device), targets.to(self.device), mask.to(self.device)

    def token_logprobs(self, enc: torch.Tensor, token_seqs: list[list[int]], texts=None, asr: bool = False):
        """Per-token log-probs [N, L+1] (restricted vocabulary; full with ``asr``) and mask; enc rows align
        with token_seqs."""
        inputs, targets, mask = self._targets(token_seqs, texts, asr=asr)
        hidden = self.whisper.model.decoder(input_ids=inputs, encoder_hidden_states=enc,
                                            use_cache=False).last_hidden_state
        prompt = self.asr_prefix if asr else self.slu_prefix
        hidden = hidden[:, len(prompt) - 1:]  # positions that predict target tokens
        logits = F.linear(hidden, self.whisper.proj_out.weight) if asr else self.restricted_logits(hidden)
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return picked.masked_fill(~mask, 0.0), mask

    def loss(self, encoder_out_or_mels: torch.Tensor, target_texts: Sequence[str]) -> torch.Tensor:
        """Mean token NLL (incl. <|endoftext|>) of the target frame strings, teacher forced."""
        enc = self.as_encoder_states(encoder_out_or_mels)
        target_texts = list(target_texts)
        if len(target_texts) != enc.shape[0]:
            raise ValueError(f"loss: {enc.shape[0]} encoder rows but {len(target_texts)} targets")
        total, count = self.token_nll(enc, target_texts)
        return total / count

    def intent_span(self, text: str, tokens: Sequence[int]) -> tuple[int, int] | None:
        """Positions [start, end) of the intent's tokens in the frame string ``text`` ("transcript |
        intent | slots") tokenised as ``tokens``; None where the text has no intent part or the pieces do
        not tokenise as prefixes of the whole (then the whole text is the target)."""
        cut = text.find("| ")                               # the bar after the transcript
        stop = text.find(" |", cut + 1) if cut >= 0 else -1  # the bar after the intent
        if stop < 0:
            return None
        start, end = self.tokenize([text[:cut + 1], text[:stop]])
        if list(tokens[:len(start)]) != start or list(tokens[:len(end)]) != end or len(end) <= len(start):
            return None
        return len(start), len(end)

    def scope_mask(self, texts: Sequence[str], token_seqs: list[list[int]], scopes: Sequence[str],
                   shape: tuple[int, int]) -> torch.Tensor:
        """[N, L+1] bool: which target positions a text teaches. ``scope`` "frame": every token (the
        transcript, intent, slots and <|endoftext|>); "intent": only the intent's tokens, the transcript
        before them is context (a pseudo-label whose intent is trusted more than its words and slots)."""
        keep = torch.ones(shape, dtype=torch.bool)
        for i, (text, seq, scope) in enumerate(zip(texts, token_seqs, scopes)):
            if scope == "frame":
                continue
            if scope != "intent":
                raise ValueError(f"token_nll: scope must be 'frame' or 'intent', got {scope!r}")
            span = self.intent_span(text, seq)
            if span is not None:
                keep[i] = False
                keep[i, span[0]:span[1]] = True
        return keep

    def token_nll(self, encoder_out: torch.Tensor, texts: Sequence[str], asr: bool = False,
                  weights: Sequence[float] | None = None,
                  scopes: Sequence[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed token NLL, number of tokens) of teacher-forced texts: SLU frames, or with ``asr`` plain
        transcripts behind the stock prompt. Kept apart so data-parallel training can divide by the
        token count of the whole global batch (the mean one process would take). ``weights`` scale each
        text's NLL (a less trusted pseudo-label counts less); the token count stays unweighted, so a text
        of weight 1 weighs what it would alone. ``scopes`` (SLU frames): per text "frame" (all of it) or
        "intent" (only the intent's tokens count, in the NLL and the token count; ``scope_mask``)."""
        texts = list(texts)
        seqs = self.tokenize(texts)
        picked, mask = self.token_logprobs(encoder_out, seqs, texts, asr=asr)
        if scopes is not None and any(s != "frame" for s in scopes):
            if len(scopes) != len(texts):
                raise ValueError(f"token_nll: {len(texts)} texts but {len(scopes)} scopes")
            mask = mask & self.scope_mask(texts, seqs, scopes, tuple(mask.shape)).to(mask.device)
            picked = picked.masked_fill(~mask, 0.0)
        if weights is None:
            return -picked.sum(), mask.sum()
        w = torch.as_tensor(list(weights), dtype=picked.dtype, device=picked.device)
        if w.shape != (picked.shape[0],):
            raise ValueError(f"token_nll: {picked.shape[0]} texts but {w.numel()} weights")
        return -(picked.sum(dim=1) * w).sum(), mask.sum()

    def asr_loss(self, encoder_out_or_mels: torch.Tensor, transcripts: Sequence[str]) -> torch.Tensor:
        """Mean token NLL of plain transcripts behind the stock prompt, over the full vocabulary.

        Mixed into SLU training so the shared decoder keeps its pretrained transcription mode: trained on
        SLU frames alone, tiny.en's real-speech WER went from 0.05 to 0.46. Targets are written the way
        stock Whisper writes (capital first letter, final period) so its style is not trained away.
        """
        enc = self.as_encoder_states(encoder_out_or_mels)
        if len(transcripts) != enc.shape[0]:
            raise ValueError(f"asr_loss: {enc.shape[0]} encoder rows but {len(transcripts)} transcripts")
        total, count = self.token_nll(enc, [stock_style(t) for t in transcripts], asr=True)
        return total / count

    def sequence_logprobs(self, encoder_out: torch.Tensor, texts: Sequence[str] | Sequence[Sequence[int]],
                          expand: torch.Tensor | Sequence[int] | None = None, chunk_size: int = 64) -> torch.Tensor:
        """Sum log-prob of each text + <|endoftext|> under the restricted vocabulary -> [N].

        ``texts``: strings (tokenised like targets) or token-id lists (e.g. ``Candidate.token_ids``;
        a trailing <|endoftext|> is optional, it is always scored).
        ``expand``: encoder row of each text (several texts per utterance); None = one text per row.
        A text this model cannot produce (a token outside its output vocabulary, or longer than the
        decoder) scores -inf instead of raising, so one odd candidate never stops an RSFT batch.
        Keeps the autograd graph if grad is enabled (wrap in torch.no_grad() for scoring).
        """
        enc = self.as_encoder_states(encoder_out)
        items = list(texts)
        if not items:
            return torch.zeros(0, device=self.device)
        rows = self._text_rows(enc, len(items), expand)
        seqs = self.token_sequences(items)
        max_len = self.config.max_target_positions - len(self.slu_prefix) - 1
        impossible = torch.tensor([len(s) > max_len or bool(self.vocab.missing(s)) for s in seqs],
                                  device=enc.device)
        seqs = [[] if bad else s for s, bad in zip(seqs, impossible.tolist())]
        out = []
        for start in range(0, len(seqs), chunk_size):
            sl = slice(start, start + chunk_size)
            picked, _ = self.token_logprobs(enc.index_select(0, rows[sl]), seqs[sl])
            out.append(picked.sum(dim=1))
        return torch.cat(out).masked_fill(impossible, -math.inf)

    @staticmethod
    def _text_rows(enc: torch.Tensor, n_texts: int, expand) -> torch.Tensor:
        """The encoder row of each text (``sequence_logprobs``'s ``expand``, checked)."""
        if expand is None:
            if n_texts != enc.shape[0]:
                raise ValueError(f"sequence_logprobs: {enc.shape[0]} encoder rows, {n_texts} texts; "
                                 "pass expand=row index per text")
            return torch.arange(n_texts, device=enc.device)
        rows = torch.as_tensor(expand, dtype=torch.long, device=enc.device).reshape(-1)
        if rows.numel() != n_texts or (rows.numel() and (rows.min() < 0 or rows.max() >= enc.shape[0])):
            raise ValueError(f"sequence_logprobs: expand must give one row in [0, {enc.shape[0]}) per text")
        return rows
