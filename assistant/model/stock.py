"""The stock reading: plain transcription by the pretrained Whisper inside an SLU model (adapters off).

Fine-tuning through adapters leaves Whisper's weights stock, so the stock prompt
(``<|startoftranscript|><|notimestamps|>`` for tiny.en) still runs the pretrained model exactly
(``SLUModel.has_stock_path``). ``StockASR`` is that part of ``SLUModel``: ``stock_encode`` +
``stock_greedy`` (what a user of stock Whisper hears, the text second pass's stock reading) and
``transcribe`` (HF generate, for WER before/after SLU).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from assistant.features import context_log_mel, frames_for_seconds
from assistant.model.decoding import eval_mode, strip_eot
from assistant.model.encoder import front_end, position_table, run_layers

STOCK_CONTEXT_SECONDS = 30.0     # Whisper's own window: the stock reading hears what stock Whisper hears


class StockASR:
    """``stock_encode`` / ``stock_greedy`` / ``transcribe`` of ``SLUModel``."""

    @torch.no_grad()
    def stock_encode(self, waves: Sequence[torch.Tensor], context_seconds: float = STOCK_CONTEXT_SECONDS
                     ) -> torch.Tensor:
        """Encoder states of the pretrained model (adapters off) over Whisper's own 30 s window.

        The stock reading of a clip must be what stock Whisper hears. In the SLU model's short context
        stock tiny.en mis-hears and repeats itself far more often (8 Kokoro clips: 3 wrong at 6 s, 1 at
        30 s), so this path pays for a full window instead of sharing the SLU encoder's lower layers.
        The positional table beyond the saved context is Whisper's sinusoids (see ``set_context``).
        """
        n_frames = frames_for_seconds(context_seconds)
        positions = n_frames // 2
        encoder = self.whisper.model.encoder
        table = getattr(self, "_stock_table", None)
        if table is None or table.shape[0] != positions:
            table = position_table(encoder.embed_positions.weight.data, positions)
            self._stock_table = table
        mels = context_log_mel(waves, n_frames, context_seconds).to(self.device)
        with eval_mode(self), self.stock():
            return encoder.layer_norm(run_layers(encoder.layers, front_end(encoder, mels, table)))

    @torch.no_grad()
    def stock_greedy(self, stock_enc: torch.Tensor, max_new_tokens: int = 48) -> list[str]:
        """Greedy plain transcription by the pretrained model (adapters off, full vocabulary, the
        checkpoint's suppress lists, as ``transformers`` generate applies them) from ``stock_encode``
        states: the reading a user of stock Whisper gets. A transcript that runs out of tokens repeating
        a phrase is cut back to its first occurrence (:func:`cut_repeats`)."""
        with eval_mode(self), self.stock():
            tokens = self._stock_greedy_tokens(stock_enc, max_new_tokens)
        return [cut_repeats(self.tokenizer.decode(strip_eot(row, self.eot_id), skip_special_tokens=True).strip())
                for row in tokens.tolist()]

    def _stock_greedy_tokens(self, stock_enc: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy tokens [n, max_new_tokens] (<|endoftext|>-padded) behind the stock prompt."""
        gen = getattr(self.whisper, "generation_config", None)
        suppress = list(getattr(gen, "suppress_tokens", None) or [])
        begin = list(getattr(gen, "begin_suppress_tokens", None) or [])
        n = stock_enc.shape[0]
        prompt = torch.tensor(self.asr_prefix, device=stock_enc.device).expand(n, -1)
        hidden, cache = self.decoder_step(prompt, stock_enc, None)
        weight = self.whisper.proj_out.weight
        tokens = torch.full((n, max_new_tokens), self.eot_id, dtype=torch.long)
        done = torch.zeros(n, dtype=torch.bool)
        for step in range(max_new_tokens):
            logits = F.linear(hidden, weight).float()
            if suppress:
                logits[:, suppress] = -math.inf
            if step == 0 and begin:
                logits[:, begin] = -math.inf
            choice = logits.argmax(dim=-1).cpu().masked_fill(done, self.eot_id)
            tokens[:, step] = choice
            done |= choice == self.eot_id
            if bool(done.all()):
                break
            hidden, cache = self.decoder_step(choice.unsqueeze(1).to(stock_enc.device), stock_enc, cache)
        return tokens

    @torch.no_grad()
    def transcribe(self, waves: Sequence[torch.Tensor], max_new_tokens: int = 128,
                   context_seconds: float | None = None) -> list[str]:
        """Plain Whisper transcription (full vocabulary, stock prompt, HF generate): WER before/after SLU.

        ``context_seconds``: None = the model's own context. Stock Whisper was trained on 30 s windows;
        with a short context it sometimes never emits <|endoftext|> and repeats itself (measured on
        tiny.en: 7/48 TTS clips loop at 6 s, 1/48 at 8-15 s, 0/48 at 30 s), so pass 30.0 for the stock
        reference. The context is restored afterwards.
        """
        kwargs = {"language": "en", "task": "transcribe"} if self.multilingual else {}
        saved_context = self.context_seconds
        with eval_mode(self):
            try:
                if context_seconds is not None and context_seconds != saved_context:
                    self.set_context(context_seconds)
                mels = self.features(waves)
                with self.stock():        # LoRA models: the adapters are for the SLU task only
                    out = self.whisper.generate(input_features=mels, max_new_tokens=max_new_tokens,
                                                attention_mask=torch.ones(mels.shape[0], mels.shape[2],
                                                                          dtype=torch.long, device=mels.device),
                                                **kwargs)
            finally:
                if self.context_seconds != saved_context:
                    self.set_context(saved_context)
        sequences = out.sequences if hasattr(out, "sequences") else out
        return [t.strip() for t in self.tokenizer.batch_decode(sequences, skip_special_tokens=True)]


def cut_repeats(text: str, min_words: int = 2) -> str:
    """'Turn it up. Turn it up. Turn i' -> 'Turn it up.': a transcript that repeats its opening phrase
    (how Whisper fails to stop when it runs out of tokens) is cut before the first repetition; the last
    word may be cut short."""
    words = text.split()
    plain = [w.strip(".,!?").lower() for w in words]
    for period in range(min_words, len(words) // 2 + 1):
        head, rest = plain[:period], plain[period:]
        whole = all(rest[i] == head[i % period] for i in range(len(rest) - 1))
        if whole and head[(len(rest) - 1) % period].startswith(rest[-1]):
            return " ".join(words[:period])
    return text
