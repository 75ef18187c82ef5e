"""Fast incremental decoder behind ``SLUModel.generate`` (greedy + sampled rows, restricted vocabulary).

``SLUModel._generate_group_reference`` steps transformers' WhisperDecoder with its ``EncoderDecoderCache``:
module machinery, scaled-dot-product attention (slow on CPU for one query) and a copy of the
cross-attention keys/values for every row. This module reads the same weights and does the same
arithmetic with less around it:

* **Cross-attention keys/values once per utterance** (per layer: keys ``[U, heads, head_dim, T]``,
  values ``[U, heads, T, head_dim]``). The rows of an utterance (its greedy row and its N samples) are
  the query rows of one matrix, so cross-attention is one ``[m, hd] @ [hd, T]`` matmul per (utterance,
  head): the encoder states are never copied per row.
* **A preallocated self-attention KV cache** (keys ``[layers, rows, heads, head_dim, capacity]``, values
  ``[layers, rows, heads, capacity, head_dim]``, grown by doubling), written in place each step; the
  one-query step is plain matmul attention.
* **Fused q/k/v projections** (one matmul) and **restricted-vocabulary logits** (``output_weight``).
* **Finished rows leave the batch** (a compaction once an eighth of the rows are done; utterances whose
  rows have all finished drop their cross-attention keys/values), so long samples do not drag short ones.
* **Large batches**: all rows of many utterances decode in lockstep (``generate(max_rows=512)``, at most
  ``MAX_UTTERANCES`` utterances). A batch runs until its longest row ends, so the few rows still going
  at the end (a sample looping to ``max_new_tokens``) decode alone; those steps are bound by reading the
  decoder weights, not by arithmetic, and larger batches share them among more candidates.

LoRA adapters (``assistant.model.lora``) are peft ``lora.Linear`` layers; while they are on, their update
``scale * B A`` is folded into the weights (the same function as the layer's ``W x + scale * B (A x)``,
up to float rounding). A decoder module carrying a hook, or a peft layer that cannot be folded, makes
:func:`supported` false, and ``generate`` then falls back to the reference decoder.

Sampling draws from the same distribution as the reference (``sample_tokens``), and
``Candidate.logprob`` is the model's own T=1 log-prob over the restricted vocabulary. The random stream
differs from the reference's (other batch shapes): seeded samples are reproducible, not identical to it.
``tests/test_sampler.py`` checks greedy identity, teacher-forced log-probs and a chi-square test of the
sampled sequence frequencies against exact probabilities.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from assistant.model.lora import foldable, linear_params

COMPACT_FRACTION = 8          # drop finished rows once they are >= 1/COMPACT_FRACTION of the batch
INITIAL_CAPACITY = 16         # self-attention cache positions after the prompt (doubled when full)
MAX_UTTERANCES = 32           # utterances decoded together (their cross-attention K/V: ~3.7 MB each for tiny.en)


def greedy_rows(n_utt: int, per_utt: int, greedy: bool, device) -> torch.Tensor:
    """Which of the ``n_utt * per_utt`` decoder rows is greedy (the first of each utterance, if any; both
    decoders lay their rows out so)."""
    is_greedy = torch.zeros(n_utt, per_utt, dtype=torch.bool, device=device)
    is_greedy[:, 0] = greedy
    return is_greedy.reshape(-1)


def sample_tokens(logits: torch.Tensor, temperature: float, top_p: float, top_k: int, generator) -> torch.Tensor:
    """Indices drawn from softmax(logits / T) restricted to the top-k / nucleus top-p (both decoders draw
    with it: ``SLUModel``'s reference decoder and the fast one here)."""
    logits = logits / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(dim=-1) - probs > top_p  # keep the smallest prefix whose mass reaches top_p
        sorted_logits = sorted_logits.masked_fill(drop, -math.inf)
        logits = torch.full_like(logits, -math.inf).scatter(-1, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class UnsupportedModel(ValueError):
    """The decoder has hooks, or LoRA layers that cannot be folded, the fast path would not run."""


def _check_hooks(module: nn.Module) -> None:
    """Raise UnsupportedModel if ``module`` has hooks the fast decoder would skip."""
    if module._forward_pre_hooks or module._forward_hooks:
        raise UnsupportedModel(f"{type(module).__name__} has a hook the fast decoder cannot fold")


def _check_linear(module: nn.Module) -> None:
    """Raise UnsupportedModel if ``module`` has hooks or is a LoRA layer the fast decoder cannot fold."""
    _check_hooks(module)
    if not foldable(module):
        raise UnsupportedModel(f"{type(module).__name__}: a LoRA layer the fast decoder cannot fold")


def _linear_params(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of ``module`` as its forward computes them now: LoRA adapters folded in while on."""
    _check_linear(module)
    return linear_params(module)


def supported(model) -> bool:
    """Whether :class:`FastDecoder` can run ``model``'s decoder (else use the reference decoder)."""
    try:
        FastDecoder(model, prepare=False)
        return True
    except UnsupportedModel:
        return False


@dataclass
class _Layer:
    ln1: tuple
    w_qkv: torch.Tensor
    b_qkv: torch.Tensor
    w_o: torch.Tensor
    b_o: torch.Tensor | None
    ln2: tuple
    w_cq: torch.Tensor
    b_cq: torch.Tensor | None
    w_ck: torch.Tensor
    w_cv: torch.Tensor
    b_cv: torch.Tensor | None
    w_co: torch.Tensor
    b_co: torch.Tensor | None
    ln3: tuple
    w_1: torch.Tensor
    b_1: torch.Tensor | None
    w_2: torch.Tensor
    b_2: torch.Tensor | None
    act: object


class _Rows:
    """The decoder batch: which global rows are alive, their utterance and slot, their caches."""

    def __init__(self, rows: torch.Tensor, utt: torch.Tensor, cross_k: list, cross_v: list, layers: int,
                 heads: int, head_dim: int, capacity: int):
        self.rows, self.utt = rows, utt                # [R] global row id, [R] index into the utterances
        self.cross_k, self.cross_v = cross_k, cross_v  # per layer [U, H, hd, T] and [U, H, T, hd]
        like, n = cross_v[0], rows.numel()
        # Self-attention cache, keys transposed so that q @ k is a plain matmul.
        self.keys = like.new_empty((layers, n, heads, head_dim, capacity))    # [L, R, H, hd, capacity]
        self.values = like.new_empty((layers, n, heads, capacity, head_dim))  # [L, R, H, capacity, hd]
        self.done = torch.zeros(n, dtype=torch.bool, device=rows.device)
        self._layout()

    def _layout(self) -> None:
        n_utt = self.cross_k[0].shape[0]
        counts = torch.bincount(self.utt, minlength=n_utt)
        self.m = int(counts.max())
        self.dense = bool((counts == self.m).all())    # rows are [U, m] utterance-major: a plain view
        starts = counts.cumsum(0) - counts
        self.slot = torch.arange(self.utt.numel(), device=self.utt.device) - starts[self.utt]

    @property
    def n(self) -> int:
        return self.rows.numel()

    @property
    def capacity(self) -> int:
        return self.values.shape[3]

    def copy_prefix(self, other: "_Rows", rows: torch.Tensor, length: int) -> None:
        """Positions [0, length) of ``other``'s rows ``rows`` become this batch's cache."""
        self.keys[..., :length] = other.keys[:, rows, :, :, :length]
        self.values[:, :, :, :length] = other.values[:, rows, :, :length]

    def compact(self, keep: torch.Tensor, length: int) -> None:
        """Keep rows ``keep`` (ascending), copying the first ``length`` cache positions."""
        self.rows, self.utt, self.done = self.rows[keep], self.utt[keep], self.done[keep]
        keys, values = self.keys, self.values
        self.keys = keys.new_empty(keys.shape[:1] + (keep.numel(),) + keys.shape[2:])
        self.values = values.new_empty(values.shape[:1] + (keep.numel(),) + values.shape[2:])
        self.keys[..., :length] = keys[:, keep, :, :, :length]
        self.values[:, :, :, :length] = values[:, keep, :, :length]
        alive = torch.unique(self.utt)
        if alive.numel() < self.cross_k[0].shape[0]:   # whole utterances finished: drop their keys/values
            self.cross_k = [k.index_select(0, alive) for k in self.cross_k]
            self.cross_v = [v.index_select(0, alive) for v in self.cross_v]
            self.utt = torch.searchsorted(alive, self.utt)
        self._layout()

    def ensure_capacity(self, position: int) -> None:
        capacity = self.capacity
        if position < capacity:
            return
        grown = max(2 * capacity, position + 1)
        keys, values = self.keys, self.values
        self.keys = keys.new_empty(keys.shape[:4] + (grown,))
        self.values = values.new_empty(values.shape[:3] + (grown,) + values.shape[4:])
        self.keys[..., :capacity] = keys
        self.values[:, :, :, :capacity] = values


class FastDecoder:
    """The Whisper decoder of an ``SLUModel``, prepared for incremental decoding (see the module doc).

    Built per ``generate`` call (a few milliseconds): the weights, and whether the adapters are on, are
    read when it is built."""

    def __init__(self, model, prepare: bool = True):
        self.model = model
        dec = model.whisper.model.decoder
        cfg = model.config
        self.d = cfg.d_model
        self.heads = cfg.decoder_attention_heads
        self.hd = self.d // self.heads
        if getattr(cfg, "scale_embedding", False):
            raise UnsupportedModel("scale_embedding=True Whisper decoders are not supported")
        for module in (dec, dec.embed_tokens, dec.embed_positions, dec.layer_norm):
            _check_hooks(module)
        for layer in dec.layers:
            for module in (layer, layer.self_attn, layer.encoder_attn, layer.self_attn_layer_norm,
                           layer.encoder_attn_layer_norm, layer.final_layer_norm):
                _check_hooks(module)
            for module in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                           layer.self_attn.out_proj, layer.encoder_attn.q_proj, layer.encoder_attn.k_proj,
                           layer.encoder_attn.v_proj, layer.encoder_attn.out_proj, layer.fc1, layer.fc2):
                _check_linear(module)
        if not prepare:
            return
        self.scaling = self.hd ** -0.5         # applied after the q projection, as transformers does
        self.layers: list[_Layer] = []
        for layer in dec.layers:
            sa, ca = layer.self_attn, layer.encoder_attn
            mods = [sa.q_proj, sa.k_proj, sa.v_proj, sa.out_proj, ca.q_proj, ca.k_proj, ca.v_proj, ca.out_proj,
                    layer.fc1, layer.fc2]
            params = [_linear_params(mod) for mod in mods]
            (wq, bq), (wk, bk), (wv, bv), (wo, bo), (cq, cbq), (ck, _), (cv, cbv), (co, cbo), (w1, b1), (w2, b2) = \
                params
            zeros = torch.zeros(self.d, dtype=wq.dtype, device=wq.device)
            b_qkv = torch.cat([bq if bq is not None else zeros, bk if bk is not None else zeros,
                               bv if bv is not None else zeros])
            self.layers.append(_Layer(
                ln1=_ln(layer.self_attn_layer_norm), w_qkv=torch.cat([wq, wk, wv]), b_qkv=b_qkv, w_o=wo, b_o=bo,
                ln2=_ln(layer.encoder_attn_layer_norm), w_cq=cq, b_cq=cbq, w_ck=ck, w_cv=cv, b_cv=cbv,
                w_co=co, b_co=cbo, ln3=_ln(layer.final_layer_norm), w_1=w1, b_1=b1, w_2=w2, b_2=b2,
                act=layer.activation_fn))
        self.embed = dec.embed_tokens.weight
        self.positions = dec.embed_positions.weight
        self.final_ln = _ln(dec.layer_norm)
        self.out_weight = model.output_weight()

    # ------------------------------------------------------------------ the decoder
    def cross_kv(self, enc: torch.Tensor) -> tuple[list, list]:
        """Cross-attention keys [U, H, hd, T] (transposed for q @ k) and values [U, H, T, hd] per layer."""
        n_utt, frames = enc.shape[:2]
        keys, values = [], []
        for layer in self.layers:
            k = F.linear(enc, layer.w_ck).view(n_utt, frames, self.heads, self.hd)
            v = F.linear(enc, layer.w_cv, layer.b_cv).view(n_utt, frames, self.heads, self.hd)
            keys.append(k.permute(0, 2, 3, 1).contiguous())
            values.append(v.transpose(1, 2).contiguous())
        return keys, values

    def new_rows(self, rows: torch.Tensor, utt: torch.Tensor, cross_k, cross_v, capacity: int) -> _Rows:
        return _Rows(rows, utt, cross_k, cross_v, len(self.layers), self.heads, self.hd, capacity)

    def step(self, tokens: torch.Tensor, position: int, st: _Rows) -> torch.Tensor:
        """Feed one token per alive row at ``position``; returns the final-norm hidden state [R, d]."""
        st.ensure_capacity(position)
        n, h, hd = st.n, self.heads, self.hd
        x = self.embed.index_select(0, tokens) + self.positions[position]
        length = position + 1
        for i, layer in enumerate(self.layers):
            # self-attention, one query against the cache
            y = F.layer_norm(x, (self.d,), *layer.ln1)
            q, k, v = F.linear(y, layer.w_qkv, layer.b_qkv).view(n, 3, h, hd).unbind(1)
            q = q * self.scaling
            st.keys[i, :, :, :, position] = k
            st.values[i, :, :, position] = v
            scores = torch.matmul(q.unsqueeze(2), st.keys[i, :, :, :, :length])           # [R, H, 1, len]
            attn = torch.matmul(torch.softmax(scores, dim=-1), st.values[i, :, :, :length])  # [R, H, 1, hd]
            x = x + F.linear(attn.reshape(n, self.d), layer.w_o, layer.b_o)
            # cross-attention: the rows of each utterance are the query rows of one matrix
            y = F.layer_norm(x, (self.d,), *layer.ln2)
            q = (F.linear(y, layer.w_cq, layer.b_cq) * self.scaling).view(n, h, hd)
            x = x + F.linear(self._cross(q, i, st), layer.w_co, layer.b_co)
            # feed-forward
            y = F.layer_norm(x, (self.d,), *layer.ln3)
            x = x + F.linear(layer.act(F.linear(y, layer.w_1, layer.b_1)), layer.w_2, layer.b_2)
        return F.layer_norm(x, (self.d,), *self.final_ln)

    def _cross(self, q: torch.Tensor, i: int, st: _Rows) -> torch.Tensor:
        n_utt, m, h, hd = st.cross_k[i].shape[0], st.m, self.heads, self.hd
        if st.dense:
            queries = q.view(n_utt, m, h, hd)
        else:
            queries = q.new_zeros(n_utt, m, h, hd)
            queries[st.utt, st.slot] = q
        scores = torch.matmul(queries.transpose(1, 2), st.cross_k[i])        # [U, H, m, T]
        out = torch.matmul(torch.softmax(scores, dim=-1), st.cross_v[i])     # [U, H, m, hd]
        out = out.transpose(1, 2)                                            # [U, m, H, hd]
        out = out.reshape(n_utt * m, self.d) if st.dense else out[st.utt, st.slot]
        return out.reshape(st.n, self.d)

    def start(self, enc: torch.Tensor, rows_of_utt: torch.Tensor, capacity: int) -> tuple[_Rows, torch.Tensor]:
        """Run the SLU prompt once per utterance, then give each row its utterance's cache.

        ``rows_of_utt``: the utterance of every decoder row, ascending. Returns the batch and the hidden
        state [R, d] that predicts the first new token."""
        prefix = self.model.slu_prefix
        n_utt, device = enc.shape[0], enc.device
        cross_k, cross_v = self.cross_kv(enc)
        utts = torch.arange(n_utt, device=device)
        prompt = self.new_rows(utts, utts, cross_k, cross_v, len(prefix))
        for position, token in enumerate(prefix):
            hidden = self.step(torch.full((n_utt,), token, dtype=torch.long, device=device), position, prompt)
        st = self.new_rows(torch.arange(rows_of_utt.numel(), device=device), rows_of_utt, cross_k, cross_v,
                           len(prefix) + capacity)
        st.copy_prefix(prompt, rows_of_utt, len(prefix))
        return st, hidden.index_select(0, rows_of_utt)

    # ------------------------------------------------------------------ uses
    def token_logprobs(self, enc: torch.Tensor, token_seqs: Sequence[Sequence[int]],
                       expand: Sequence[int] | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced per-token log-probs [N, L+1] (each sequence + <|endoftext|>, restricted
        vocabulary) and their mask, through this decoder: what ``SLUModel.token_logprobs`` computes."""
        device = enc.device
        eot, index_of = self.model.eot_id, self.model.vocab_index_of
        rows = (torch.arange(len(token_seqs)) if expand is None
                else torch.as_tensor(expand, dtype=torch.long).reshape(-1)).to(device)
        order = torch.argsort(rows, stable=True)           # rows of one utterance must be adjacent
        length = max(len(s) for s in token_seqs) + 1
        full = torch.full((len(token_seqs), length), eot, dtype=torch.long)
        mask = torch.zeros((len(token_seqs), length), dtype=torch.bool)
        for r, seq in enumerate(token_seqs):
            full[r, :len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
            mask[r, :len(seq) + 1] = True
        full, mask = full.to(device)[order], mask.to(device)[order]
        st, hidden = self.start(enc, rows[order], length)
        picked = torch.zeros(full.shape, device=device)
        for step in range(length):
            logp = torch.log_softmax(F.linear(hidden, self.out_weight).float(), dim=-1)
            picked[:, step] = logp.gather(-1, index_of[full[:, step]].clamp(min=0).unsqueeze(-1)).squeeze(-1)
            if step < length - 1:
                hidden = self.step(full[:, step], len(self.model.slu_prefix) + step, st)
        out = torch.empty_like(picked)
        out[order] = picked.masked_fill(~mask, 0.0)
        back = torch.empty_like(mask)
        back[order] = mask
        return out, back

    def generate_group(self, enc, num_samples: int, greedy: bool, temperature: float, top_p: float, top_k: int,
                       max_new_tokens: int, generator, timings: dict | None = None) -> tuple:
        """Decode ``int(greedy) + num_samples`` rows per utterance of ``enc``; returns what
        ``SLUModel.collect_candidates`` takes: tokens [rows, max_new_tokens], logprob, finished, is_greedy.

        ``timings``: a dict to add seconds per stage to ("prompt": cross-attention K/V + the prompt,
        "decoder", "sample", "compact") and the work done ("steps", "row_steps")."""
        clock = _Clock(timings)

        model = self.model
        per_utt = int(greedy) + num_samples
        n_utt, device = enc.shape[0], enc.device
        n_rows = n_utt * per_utt
        is_greedy = greedy_rows(n_utt, per_utt, greedy, device)
        eot_index, vocab_ids, prefix = model.vocab.eot_index, model.vocab_ids, len(model.slu_prefix)
        plain = top_k == 0 and top_p >= 1.0

        tokens = torch.full((n_rows, max_new_tokens), model.eot_id, dtype=torch.long, device=device)
        logprob = torch.zeros(n_rows, dtype=torch.float64, device=device)
        finished = torch.zeros(n_rows, dtype=torch.bool, device=device)
        utt_of_row = torch.arange(n_utt, device=device).repeat_interleave(per_utt)
        st, hidden = self.start(enc, utt_of_row, min(max_new_tokens, INITIAL_CAPACITY))
        clock.lap("prompt")
        for step in range(max_new_tokens):
            logits = F.linear(hidden, self.out_weight).float()
            logp = torch.log_softmax(logits, dim=-1)
            choice = logp.argmax(dim=-1) if greedy else None
            if num_samples:
                if plain:
                    probs = logp.exp() if temperature == 1.0 else torch.softmax(logits / temperature, dim=-1)
                    drawn = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
                else:
                    drawn = sample_tokens(logits, temperature, top_p, top_k, generator)
                choice = drawn if not greedy else torch.where(is_greedy[st.rows], choice, drawn)
            done = st.done
            choice = choice.masked_fill(done, eot_index)
            step_lp = logp.gather(-1, choice.unsqueeze(-1)).squeeze(-1).masked_fill(done, 0.0)
            logprob[st.rows] += step_lp.double()
            token = vocab_ids[choice]
            tokens[st.rows, step] = token
            ended = choice == eot_index
            finished[st.rows[ended]] = True
            st.done = done | ended
            clock.lap("sample")
            if step == max_new_tokens - 1:
                break
            n_done = int(st.done.sum())
            if n_done == st.n:
                break
            if n_done * COMPACT_FRACTION >= st.n:
                keep = (~st.done).nonzero().squeeze(1)
                st.compact(keep, prefix + step)
                token = token[keep]
                clock.lap("compact")
            clock.count(st.n)
            hidden = self.step(token, prefix + step, st)
            clock.lap("decoder")
        return tokens, logprob, finished, is_greedy


class _Clock:
    """Seconds per stage into a dict (or nothing when there is no dict)."""

    def __init__(self, timings: dict | None):
        self.timings = timings
        self.last = time.perf_counter() if timings is not None else 0.0

    def lap(self, stage: str) -> None:
        if self.timings is not None:
            now = time.perf_counter()
            self.timings[stage] = self.timings.get(stage, 0.0) + now - self.last
            self.last = now

    def count(self, rows: int) -> None:
        if self.timings is not None:
            self.timings["steps"] = self.timings.get("steps", 0) + 1
            self.timings["row_steps"] = self.timings.get("row_steps", 0) + rows


def _ln(norm: nn.LayerNorm) -> tuple:
    return norm.weight, norm.bias, norm.eps


def fast_generate_group(model, enc, num_samples, greedy, temperature, top_p, top_k, max_new_tokens, generator,
                        timings: dict | None = None):
    """``SLUModel._generate_group_reference``'s contract on the fast decoder (at most ``MAX_UTTERANCES``
    utterances at a time)."""
    decoder = FastDecoder(model)
    out = []
    for start in range(0, enc.shape[0], MAX_UTTERANCES):
        part = enc[start:start + MAX_UTTERANCES]
        tokens, logprob, finished, is_greedy = decoder.generate_group(part, num_samples, greedy, temperature, top_p,
                                                                      top_k, max_new_tokens, generator, timings)
        out += model.collect_candidates(tokens, logprob, finished, is_greedy, part.shape[0], int(greedy) + num_samples)
    return out
