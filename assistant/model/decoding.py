"""Decoding frame strings: tokens <-> text, decoded rows -> candidates, and ``SLUModel.generate``.

``TokenText`` is shared by both speech models (``SLUModel`` and the ONNX runtime ``OnnxSLU``): one
tokenisation of targets, one ``decode_tokens``, one way decoded rows become ``Candidate`` lists.
``Decoding`` is the eager model's generation: greedy + sampled rows decoded together in lockstep with the
KV cache, the encoder run once per utterance, by the fast decoder (assistant.model.sampler) or the
reference one here (transformers' WhisperDecoder and its cache). ``Candidate.logprob`` is the sequence
log-prob under the model itself (temperature 1, no top-k/top-p), i.e. what ``sequence_logprobs`` returns
for ``token_ids``, so sampler settings never leak into RSFT scores.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Sequence

import torch
import torch.nn.functional as F

from assistant.model.candidate import Candidate
from assistant.model.sampler import fast_generate_group, greedy_rows, sample_tokens, supported
from assistant.model.vocab import batch_text_token_ids


def strip_eot(token_ids: list[int], eot_id: int) -> list[int]:
    """A decoded row up to its first <|endoftext|> (the rest is padding)."""
    return token_ids[:token_ids.index(eot_id)] if eot_id in token_ids else token_ids


def as_list(values) -> list:
    """A torch tensor (any device) or numpy array as a Python list."""
    return values.cpu().tolist() if torch.is_tensor(values) else values.tolist()


@contextlib.contextmanager
def eval_mode(model):
    """``model`` in eval mode for the block, back in the mode it had afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


class TokenText:
    """Text <-> token ids and decoded rows -> candidates, for a model with ``tokenizer`` and ``eot_id``."""

    tokenizer: object
    eot_id: int

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return batch_text_token_ids(self.tokenizer, list(texts))

    def decode_tokens(self, token_ids: Sequence[int]) -> str:
        ids = [int(t) for t in token_ids if int(t) != self.eot_id]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def token_sequences(self, texts: Sequence[str] | Sequence[Sequence[int]]) -> list[list[int]]:
        """What ``sequence_logprobs`` scores: strings tokenised like targets, or token-id lists (e.g.
        ``Candidate.token_ids``) without their optional trailing <|endoftext|>."""
        items = list(texts)
        if not items or isinstance(items[0], str):
            return self.tokenize(items)
        seqs = [[int(t) for t in s] for s in items]
        return [s[:-1] if s and s[-1] == self.eot_id else s for s in seqs]

    def collect_candidates(self, tokens, logprob, finished, is_greedy, n_utt, per_utt) -> list[list[Candidate]]:
        """Decoded rows -> distinct candidates per utterance (greedy first, repeats counted as votes):
        ``tokens`` [n_utt * per_utt, steps] in the full vocabulary, each row's ``logprob``, whether it
        ``finished`` and ``is_greedy`` (torch tensors or numpy arrays). Every decoder ends here."""
        tokens, logprob, finished, is_greedy = (as_list(x) for x in (tokens, logprob, finished, is_greedy))
        out = []
        for u in range(n_utt):
            by_text: dict[str, dict] = {}
            for r in range(u * per_utt, (u + 1) * per_utt):
                seq = strip_eot(tokens[r], self.eot_id)
                text = self.decode_tokens(seq)
                draw = int(not is_greedy[r])
                if text in by_text:           # a repeat: one candidate, one more vote
                    by_text[text]["count"] += draw
                    by_text[text]["greedy"] |= bool(is_greedy[r])
                    continue
                by_text[text] = dict(text=text, token_ids=seq, logprob=float(logprob[r]), greedy=bool(is_greedy[r]),
                                     finished=bool(finished[r]), count=draw)
            out.append([Candidate(index=i, **fields) for i, fields in enumerate(by_text.values())])
        return out


@functools.cache
def decoder_cache_kwarg() -> str:
    """transformers 5 renamed ``past_key_values`` to ``cache``; support both."""
    from transformers.models.whisper.modeling_whisper import WhisperDecoder

    params = inspect.signature(WhisperDecoder.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class Decoding:
    """``SLUModel.generate`` and the decoder step it (and the stock reading) runs."""

    sampler = "fast"     # "fast" (assistant.model.sampler) or "reference" (_generate_group_reference)

    def decoder_step(self, ids: torch.Tensor, enc: torch.Tensor, cache):
        """transformers' decoder on ``ids`` after ``cache``: (last hidden state [B, d], the grown cache)."""
        kwarg = decoder_cache_kwarg()
        out = self.whisper.model.decoder(input_ids=ids, encoder_hidden_states=enc, use_cache=True, **{kwarg: cache})
        new_cache = getattr(out, "cache", None) if kwarg == "cache" else out.past_key_values
        return out.last_hidden_state[:, -1], new_cache

    @torch.no_grad()
    def generate(self, encoder_out: torch.Tensor, num_samples: int = 0, greedy: bool = True,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, max_new_tokens: int = 96,
                 seed: int | None = None, max_rows: int = 512) -> list[list[Candidate]]:
        """Greedy and/or ``num_samples`` sampled frame strings per utterance, distinct texts, greedy first.

        Sampling uses ``temperature``/``top_k``/``top_p``; ``Candidate.logprob`` is always the model's own
        log-prob (T=1, untruncated) over the restricted vocabulary. ``seed`` makes sampling reproducible.
        Utterances are decoded in groups of at most ``max_rows`` decoder rows to bound memory.
        Decodes with the fast sampler (``assistant.model.sampler``) unless ``self.sampler == "reference"``.
        """
        enc = self.as_encoder_states(encoder_out)
        if num_samples < 0 or (num_samples == 0 and not greedy):
            raise ValueError("generate: ask for greedy=True and/or num_samples > 0")
        if num_samples and (temperature <= 0 or not 0 < top_p <= 1 or top_k < 0):
            raise ValueError("generate: temperature must be > 0, 0 < top_p <= 1, top_k >= 0")
        max_new_tokens = min(max_new_tokens, self.config.max_target_positions - len(self.slu_prefix))
        per_utt = int(greedy) + num_samples
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device.type if self.device.type != "mps" else "cpu")
            generator.manual_seed(int(seed))
        with eval_mode(self):
            results: list[list[Candidate]] = []
            group = max(1, max_rows // per_utt)
            run = self._generate_group_reference
            if self.sampler == "fast":
                if supported(self):
                    run = functools.partial(fast_generate_group, self)
            for start in range(0, enc.shape[0], group):
                results += run(enc[start:start + group], num_samples, greedy, temperature, top_p, top_k,
                               max_new_tokens, generator)
            return results

    def _generate_group_reference(self, enc, num_samples, greedy, temperature, top_p, top_k, max_new_tokens,
                                  generator):
        """Lockstep decoding of all rows of a group of utterances through transformers' WhisperDecoder and
        its cache; finished rows are dropped as they end. The reference for the fast sampler
        (``assistant.model.sampler``), used when ``sampler == "reference"`` or the fast path cannot run."""
        per_utt = int(greedy) + num_samples
        n_utt, device = enc.shape[0], enc.device
        rows = torch.arange(n_utt, device=device).repeat_interleave(per_utt)
        n_rows = rows.numel()
        is_greedy = greedy_rows(n_utt, per_utt, greedy, device)

        weight = self.output_weight()
        eot_index = self.vocab.eot_index
        tokens = torch.full((n_rows, max_new_tokens), self.eot_id, dtype=torch.long, device=device)
        logprob = torch.zeros(n_rows, dtype=torch.float64, device=device)
        finished = torch.zeros(n_rows, dtype=torch.bool, device=device)
        # The prompt is the same for every row of an utterance: run it (and the cross-attention K/V)
        # once per utterance, then copy the cache out to the rows.
        prompt = torch.tensor(self.slu_prefix, device=device).expand(n_utt, -1)
        hidden, cache = self.decoder_step(prompt, enc, None)
        cache.reorder_cache(rows)
        hidden, enc_rows = hidden.index_select(0, rows), enc.index_select(0, rows)
        alive = torch.arange(n_rows, device=device)  # rows still in the decoder batch
        for step in range(max_new_tokens):
            logits = F.linear(hidden, weight).float()
            logp = torch.log_softmax(logits, dim=-1)
            choice = logp.argmax(dim=-1)
            if num_samples:
                choice = torch.where(is_greedy[alive], choice, sample_tokens(logits, temperature, top_p, top_k, generator))
            done = finished[alive]
            choice = choice.masked_fill(done, eot_index)
            step_lp = logp.gather(-1, choice.unsqueeze(-1)).squeeze(-1).masked_fill(done, 0.0)
            logprob[alive] += step_lp.double()
            token = self.vocab_ids[choice]
            tokens[alive, step] = token
            finished[alive] = done | (choice == eot_index)
            if bool(finished.all()) or step == max_new_tokens - 1:
                break
            done = finished[alive]
            if int(done.sum()) * 4 >= alive.numel():  # drop finished rows once they are a quarter
                keep = (~done).nonzero().squeeze(1)
                cache.reorder_cache(keep)
                alive, token, enc_rows = alive[keep], token[keep], enc_rows.index_select(0, keep)
            hidden, cache = self.decoder_step(token.unsqueeze(1), enc_rows, cache)
        return self.collect_candidates(tokens, logprob, finished, is_greedy, n_utt, per_utt)
