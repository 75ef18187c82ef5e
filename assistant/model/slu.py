"""Speech-to-frame model: Whisper (tiny.en by default) emitting ``transcript | intent | slots``.

Design choices (see also assistant.model.vocab):

* **Short encoder context.** Voice commands last a few seconds; Whisper always encodes 30 s. We keep the
  first ``context_seconds * 100`` mel frames (encoder positions = half that) by truncating the encoder's
  positional table and ``config.max_source_positions``, so 6 s costs 1/5 of the encoder compute.
  Audio is zero-padded to the context before the STFT, exactly like Whisper pads to 30 s.
* **Separate task prefix.** SLU outputs are decoded after a prefix the checkpoint never uses for plain
  English transcription, so fine-tuning does not overwrite the stock ASR prompt used by ``transcribe``.
  English-only (tiny.en): ``<|startoftranscript|><|translate|><|notimestamps|>`` (it never uses
  <|translate|>), stock prompt ``<|startoftranscript|><|notimestamps|>``. Multilingual (base), which
  translates for real: see ``assistant.model.io.MULTILINGUAL_SLU_LANGUAGE``.
* **Restricted output vocabulary.** Loss, scoring and generation compute logits only over
  ``OutputVocab.ids`` (rows of the tied ``proj_out``); targets outside it raise a ValueError.
* **Own incremental decoder** for ``generate`` (assistant.model.decoding, assistant.model.sampler).

``SLUModel`` implements ``assistant.model.interface.SpeechModel``. Its parts live beside it: io.py
(from_pretrained, tiny_random, prefixes, vocabulary resolution), losses.py (teacher forcing),
decoding.py (generate, candidates), stock.py (the pretrained model's own reading), encoder.py (the
encoder run piece by piece); this file holds the model itself, its context, adapters and encoder.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from assistant.features import FRAMES_PER_SECOND, context_log_mel, frames_for_seconds
from assistant.model.candidate import Candidate
from assistant.model.convert import is_multilingual
from assistant.model.decoding import Decoding, TokenText
from assistant.model.encoder import front_end, position_table, run_layers
from assistant.model.io import FORMAT_VERSION, SLU_CONFIG_FILE, PretrainedIO, fork_rng, save_hf_folder, task_prefixes
from assistant.model.lora import (LoraAdapters, LoraConfig, adapter_weights_file, adapters_off, base_state_dict,
                                  save_adapters)
from assistant.model.losses import TeacherForcing, stock_style
from assistant.model.stock import StockASR, cut_repeats
from assistant.model.vocab import OutputVocab

# Re-exported: callers import them from here (``from assistant.model.slu import SLUModel, Candidate``).
__all__ = ["Candidate", "SLUModel", "SLU_CONFIG_FILE", "cut_repeats", "stock_style"]


class SLUModel(PretrainedIO, TeacherForcing, Decoding, StockASR, TokenText, nn.Module):
    def __init__(self, whisper, tokenizer, output_vocab: OutputVocab, context_seconds: float | None = None):
        super().__init__()
        self.whisper = whisper
        self.tokenizer = tokenizer
        # Optional text second pass, duck-typed (.readings, .weight, .stock_bonus, .uses_stock, .save): the
        # model layer never imports it; assistant.nlu.load_pipeline fills it from the folder's nlu/.
        self.nlu = None
        self.lora = None         # LoraConfig when the model fine-tunes through adapters (add_adapters)
        self.adapters = None     # LoraAdapters (peft) of the Whisper module; off for the stock ASR prompt
        self.vocab = output_vocab
        if output_vocab.vocab_size != whisper.config.vocab_size:
            raise ValueError(f"output vocabulary is for {output_vocab.vocab_size} tokens, "
                             f"the model has {whisper.config.vocab_size}")
        # Non-persistent: the state dict stays exactly Whisper's (checkpoints are plain HF folders).
        self.register_buffer("vocab_ids", output_vocab.ids.clone(), persistent=False)
        self.register_buffer("vocab_index_of", output_vocab.index_of.clone(), persistent=False)
        self.multilingual = is_multilingual(whisper.config.vocab_size)
        self.slu_prefix, self.asr_prefix, self.eot_id = task_prefixes(tokenizer, self.multilingual)
        if self.eot_id != self.vocab.eot_id:
            raise ValueError(f"tokenizer <|endoftext|> is {self.eot_id}, vocabulary says {self.vocab.eot_id}")
        max_seconds = self.whisper.config.max_source_positions * 2 / FRAMES_PER_SECOND
        self.set_context(context_seconds if context_seconds is not None else max_seconds)

    # ================================================================== context
    def set_context(self, seconds: float) -> None:
        """Use ``seconds`` of encoder context: truncates the positional table (or extends it with Whisper's
        sinusoids) and ``config.max_source_positions``, so transformers accepts [B, 80, 100 * seconds]."""
        n_frames = frames_for_seconds(seconds)
        if n_frames < 2 or n_frames % 2:
            raise ValueError(f"context_seconds={seconds} gives {n_frames} mel frames; use a multiple of 0.02 s "
                             "(the encoder halves the frame rate)")
        positions = n_frames // 2
        encoder = self.whisper.model.encoder
        if positions != encoder.embed_positions.num_embeddings:
            table = position_table(encoder.embed_positions.weight.data, positions)
            encoder.embed_positions = nn.Embedding(positions, table.shape[1]).to(table.device, table.dtype)
            encoder.embed_positions.weight.data.copy_(table)
            encoder.embed_positions.requires_grad_(False)
        self.whisper.config.max_source_positions = positions
        encoder.max_source_positions = positions
        if hasattr(encoder, "config"):
            encoder.config.max_source_positions = positions
        self.whisper.model.decoder.max_source_positions = positions
        self.context_seconds = n_frames / FRAMES_PER_SECOND
        self.n_frames = n_frames

    # ================================================================== adapters (assistant.model.lora)
    def add_adapters(self, cfg: LoraConfig, seed: int = 0) -> None:
        """Fine-tune through LoRA adapters from now on; the Whisper weights stay the stock ones. Their random
        start comes from ``seed`` alone (not from whatever torch's global RNG holds), so a run repeats."""
        if self.adapters is not None:
            raise ValueError("this model already has adapters")
        with fork_rng(seed):
            self.adapters = LoraAdapters(self.whisper, cfg)
        self.lora = cfg

    def load_adapters(self, folder: Path, cfg: LoraConfig) -> None:
        adapter_weights_file(folder)         # FileNotFoundError before the model changes
        self.add_adapters(cfg)
        self.adapters.load(Path(folder))     # peft's files, or an older folder's adapters.safetensors

    def stock(self):
        """Context in which the adapters are off: the model is exactly the pretrained checkpoint."""
        return adapters_off(self.adapters)

    def merged_copy(self) -> "SLUModel":
        """A copy with the adapters folded into the weights (same SLU outputs, one matmul per layer;
        the stock ASR path is gone). Used by the ONNX export."""
        clone = copy.deepcopy(self)
        if clone.adapters is not None:
            clone.whisper = clone.adapters.merge()
            clone.adapters, clone.lora = None, None
        return clone

    def encoder_state(self) -> dict[str, torch.Tensor]:
        """Everything that determines the encoder's output: its weights and its adapters (peft's layers
        are part of the encoder module)."""
        return dict(self.whisper.model.encoder.state_dict())

    @property
    def has_stock_path(self) -> bool:
        """The stock prompt runs the pretrained model exactly only when fine-tuning went into adapters."""
        return self.adapters is not None

    def save_pretrained(self, folder: str | Path) -> Path:
        """HF folder (safetensors, config, generation config, tokenizer, processor) + vocab.json + slu_config.json
        (+ lora/: peft's adapter_config.json and adapter_model.safetensors for a LoRA model)."""
        folder = save_hf_folder(self.whisper, self.tokenizer, self.vocab, self.context_seconds, folder,
                                state_dict=base_state_dict(self.whisper))
        save_adapters(self.adapters, folder)
        (folder / SLU_CONFIG_FILE).write_text(json.dumps({
            "format": FORMAT_VERSION,
            "context_seconds": self.context_seconds,
            "slu_prefix": self.tokenizer.convert_ids_to_tokens(self.slu_prefix),
            "asr_prefix": self.tokenizer.convert_ids_to_tokens(self.asr_prefix),
            "output_vocab_size": len(self.vocab),
            "lora": self.lora.to_dict() if self.lora is not None else None,
        }, indent=2))
        return folder

    # ================================================================== helpers
    @property
    def device(self) -> torch.device:
        return self.whisper.proj_out.weight.device

    @property
    def config(self):
        return self.whisper.config

    def freeze(self, encoder_layers: int | str | None) -> None:
        """Freeze the conv front end + the first ``encoder_layers`` encoder layers ('all' = whole encoder,
        None/'none' = train everything). Everything else becomes trainable (calls are idempotent).
        With adapters only adapters train (those of frozen encoder layers excepted): Whisper stays stock."""
        encoder = self.whisper.model.encoder
        if self.adapters is not None:
            self.whisper.requires_grad_(False)
            n = len(encoder.layers)
            frozen = n if encoder_layers == "all" else 0 if encoder_layers in (None, "none") else int(encoder_layers)
            self.adapters.train_encoder_from(frozen)
            return
        for p in self.whisper.parameters():
            p.requires_grad_(True)
        encoder.embed_positions.requires_grad_(False)  # fixed sinusoids in Whisper
        if encoder_layers is None or encoder_layers == "none":
            return
        if encoder_layers == "all":
            encoder.requires_grad_(False)
            return
        if not isinstance(encoder_layers, int) or encoder_layers < 0:
            raise ValueError(f"freeze(encoder_layers={encoder_layers!r}): pass an int >= 0, 'all' or None")
        if encoder_layers > len(encoder.layers):
            raise ValueError(f"freeze: the encoder has {len(encoder.layers)} layers, asked for {encoder_layers}")
        for module in (encoder.conv1, encoder.conv2, *encoder.layers[:encoder_layers]):
            module.requires_grad_(False)
        if encoder_layers == len(encoder.layers):
            encoder.layer_norm.requires_grad_(False)

    def output_weight(self) -> torch.Tensor:
        """Rows of the tied output projection for the restricted vocabulary: [V_sub, d]."""
        weight = self.whisper.proj_out.weight
        return weight if self.vocab.is_full else weight.index_select(0, self.vocab_ids)

    def restricted_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.output_weight())

    # ================================================================== audio -> encoder
    def features(self, waves: Sequence[torch.Tensor]) -> torch.Tensor:
        """16 kHz mono waves -> log-mels [B, 80, n_frames]; clips longer than the context are cut (warning)."""
        return context_log_mel(waves, self.n_frames, self.context_seconds).to(self.device)

    def encode(self, mels: torch.Tensor) -> torch.Tensor:
        """[B, 80, n_frames] -> encoder states [B, n_frames / 2, d_model]."""
        expected = (self.config.num_mel_bins, self.n_frames)
        if mels.dim() != 3 or tuple(mels.shape[1:]) != expected:
            raise ValueError(f"encode expects log-mels [B, {expected[0]}, {expected[1]}] (the model's "
                             f"{self.context_seconds:g} s context), got {tuple(mels.shape)}; use model.features()")
        return self.whisper.model.encoder(input_features=mels.to(self.device)).last_hidden_state

    def encode_trunk(self, mels: torch.Tensor, layers: int) -> torch.Tensor:
        """Conv front end + positions + the first ``layers`` encoder layers (no final norm).

        With the trunk frozen, its output never changes during training: callers cache it once and run
        only ``encode_head`` per step (the main lever for CPU fine-tuning speed).
        ``encode_head(encode_trunk(m, k), k) == encode(m)`` for every k.
        """
        enc = self.whisper.model.encoder
        return run_layers(enc.layers[:layers], front_end(enc, mels.to(self.device), enc.embed_positions.weight))

    def encode_head(self, hidden: torch.Tensor, layers: int) -> torch.Tensor:
        """The encoder layers after the first ``layers`` + the final layer norm."""
        enc = self.whisper.model.encoder
        return enc.layer_norm(run_layers(enc.layers[layers:], hidden.to(self.device)))

    def as_encoder_states(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder states as they are, or log-mels encoded (what loss, scoring and generate accept)."""
        if x.dim() == 3 and tuple(x.shape[1:]) == (self.config.num_mel_bins, self.n_frames):
            return self.encode(x)
        if x.dim() == 3 and x.shape[-1] == self.config.d_model:
            return x
        raise ValueError(f"expected encoder states [B, T, {self.config.d_model}] or log-mels "
                         f"[B, {self.config.num_mel_bins}, {self.n_frames}], got {tuple(x.shape)}")
