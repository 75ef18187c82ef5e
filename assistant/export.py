"""`assistant export`: the SLU model as two ONNX graphs + an onnxruntime runtime (``OnnxSLU``).

    assistant export --model runs/sft_default/best --format onnx [--quantize int8] --out runs/export/onnx

What a deployment needs, nothing more:

* ``encoder.onnx``: log-mel [B, 80, n_frames] -> encoder states [B, n_frames/2, d] **and** the decoder's
  cross-attention keys/values [L, B, H, S, head_dim]. Everything that runs once per utterance is in this
  graph, so a decoder step never re-projects the encoder states (that would cost more than the encoder).
* ``decoder.onnx``: one decoder call with a self-attention KV cache. Inputs are *restricted-vocabulary*
  indices (the model's OutputVocab plus the task prompt tokens), outputs are logits over the OutputVocab
  only (the matching rows of the tied ``proj_out``) and the grown cache. With an empty cache it is the
  full-sequence (teacher-forced) decoder; with a cache and one token per row it is the greedy step.
  Restricting the vocabulary on both sides drops the 51,864-row embedding table from the graph: the
  decoder file is ~4x smaller than Whisper tiny's.
* ``*.int8.onnx`` (``--quantize int8``): onnxruntime dynamic int8 quantisation of the MatMul weights.
* ``export.json`` (token maps, prompt, shapes) + the tokenizer files, so ``OnnxSLU`` needs no checkpoint.

The graphs are written by hand from the model's own modules (the legacy TorchScript exporter, opset 17)
rather than by tracing transformers' decoder: its cache objects change between releases, the math of a
Whisper layer does not. ``verify_export`` checks exported against eager outputs after every export.

``OnnxSLU`` implements the speech-model interface (``assistant.model.interface.SpeechModel``) like the
eager ``SLUModel`` does (greedy and sampled decoding without top-p / top-k, no stock reading), so every inference path runs on it.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch import nn

from assistant.config import parse_command
from assistant.model.encoder import front_end, run_layers
from assistant.model.onnx_runtime import (EXPORT_CONFIG, EXPORT_FORMAT, EXPORT_VERSION, ExportError, OnnxEncoded,
                                          OnnxSLU)

if TYPE_CHECKING:
    from assistant.model.slu import SLUModel

OPSET = 17
# Masked attention scores: large and finite (an -inf row would turn softmax into NaN in some kernels).
_MASK_VALUE = -1e9


# ==================================================================================================
# Export graphs (torch modules over the model's own weights)
# ==================================================================================================

def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[B, T, d] -> [B, H, T, d/H]"""
    b, t, d = x.shape
    return x.reshape(b, t, n_heads, d // n_heads).transpose(1, 2)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Scaled dot-product attention; q is already scaled (Whisper scales q before the product)."""
    scores = torch.matmul(q, k.transpose(-1, -2))
    if mask is not None:
        scores = scores + mask
    out = torch.matmul(torch.softmax(scores, dim=-1), v)       # [B, H, T, hd]
    b, h, t, hd = out.shape
    return out.transpose(1, 2).reshape(b, t, h * hd)


class EncoderGraph(nn.Module):
    """mels -> (encoder states, cross-attention K, cross-attention V) of every decoder layer."""

    def __init__(self, model):
        super().__init__()
        self.encoder = model.whisper.model.encoder
        self.cross = nn.ModuleList([layer.encoder_attn for layer in model.whisper.model.decoder.layers])
        self.n_heads = model.config.decoder_attention_heads

    def forward(self, mels: torch.Tensor):
        enc = self.encoder
        states = enc.layer_norm(run_layers(enc.layers, front_end(enc, mels, enc.embed_positions.weight)))
        keys = torch.stack([_heads(a.k_proj(states), self.n_heads) for a in self.cross])
        values = torch.stack([_heads(a.v_proj(states), self.n_heads) for a in self.cross])
        return states, keys, values


class DecoderGraph(nn.Module):
    """(input indices [B, n], self K/V cache [L, B, H, P, hd], cross K/V) -> (logits [B, n, V_sub], new cache).

    ``input_table``: the token ids whose embeddings the graph holds (index i = token input_table[i]);
    ``output_weight``: the OutputVocab rows of the tied output projection. Positions start at P.
    """

    def __init__(self, model, input_table: torch.Tensor):
        super().__init__()
        decoder = model.whisper.model.decoder
        self.layers = decoder.layers
        self.final_norm = decoder.layer_norm
        self.n_heads = model.config.decoder_attention_heads
        weight = decoder.embed_tokens.weight.detach()
        self.register_buffer("embed", weight.index_select(0, input_table.to(weight.device)).clone())
        self.register_buffer("positions", decoder.embed_positions.weight.detach().clone())
        self.register_buffer("output_weight", model.output_weight().detach().clone())

    def forward(self, input_index, self_keys, self_values, cross_keys, cross_values):
        past = self_keys.shape[3]
        n = input_index.shape[1]
        pos = torch.arange(n, device=input_index.device) + past
        x = self.embed[input_index] + self.positions[pos]
        key_pos = torch.arange(past + n, device=input_index.device)
        # A new token at position p sees every cached position and the new ones up to p.
        mask = (key_pos.unsqueeze(0) > pos.unsqueeze(1)).to(x.dtype) * _MASK_VALUE        # [n, P+n]
        new_keys, new_values = [], []
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            h = layer.self_attn_layer_norm(x)
            q = _heads(attn.q_proj(h) * attn.scaling, self.n_heads)
            k = torch.cat([self_keys[i], _heads(attn.k_proj(h), self.n_heads)], dim=2)
            v = torch.cat([self_values[i], _heads(attn.v_proj(h), self.n_heads)], dim=2)
            new_keys.append(k)
            new_values.append(v)
            x = x + attn.out_proj(_attend(q, k, v, mask))
            cross = layer.encoder_attn
            h = layer.encoder_attn_layer_norm(x)
            q = _heads(cross.q_proj(h) * cross.scaling, self.n_heads)
            x = x + cross.out_proj(_attend(q, cross_keys[i], cross_values[i], None))
            h = layer.final_layer_norm(x)
            x = x + layer.fc2(layer.activation_fn(layer.fc1(h)))
        x = self.final_norm(x)
        logits = torch.matmul(x, self.output_weight.t())
        return logits, torch.stack(new_keys), torch.stack(new_values)


def decoder_input_table(model) -> torch.Tensor:
    """Token ids the decoder can be fed: the output vocabulary + every prompt token, sorted."""
    ids = set(model.vocab.ids.tolist()) | set(model.slu_prefix)
    return torch.tensor(sorted(ids), dtype=torch.long)


# ==================================================================================================
# Export
# ==================================================================================================

def _onnx_export(module: nn.Module, args: tuple, path: Path, input_names, output_names, dynamic_axes) -> None:
    # The legacy (TorchScript) exporter: the dynamo one needs onnxscript, which is not a dependency here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=OPSET, do_constant_folding=True,
                          dynamo=False)


def export_onnx(model: SLUModel, out_dir: str | Path, quantize: str | None = None, verify: bool = True,
                progress: bool = True) -> Path:
    """Write encoder.onnx, decoder.onnx (+ int8 versions), export.json and the tokenizer into ``out_dir``.

    ``verify`` runs the fixture-free self-check ``verify_export`` (random log-mels, teacher-forced and
    cached decoding) and raises ExportError if exported and eager outputs disagree.
    """
    if quantize not in (None, "none", "int8"):
        raise ExportError(f"--quantize {quantize!r}: only 'int8' (onnxruntime dynamic quantisation) is supported")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    if model.adapters is not None:
        model = model.merged_copy()     # LoRA folded in: the export is the SLU path only
    cfg = model.config
    n_layers, n_heads = cfg.decoder_layers, cfg.decoder_attention_heads
    head_dim = cfg.d_model // n_heads
    table = decoder_input_table(model)
    say = print if progress else (lambda *a, **k: None)

    with torch.no_grad():
        mels = torch.zeros(1, cfg.num_mel_bins, model.n_frames)
        say(f"export: encoder ({model.context_seconds:g} s context) -> {out / 'encoder.onnx'}")
        _onnx_export(EncoderGraph(model).eval(), (mels,), out / "encoder.onnx", ["mels"],
                     ["encoder_states", "cross_keys", "cross_values"],
                     {"mels": {0: "batch"}, "encoder_states": {0: "batch"}, "cross_keys": {1: "batch"},
                      "cross_values": {1: "batch"}})
        states = model.whisper.model.encoder.embed_positions.num_embeddings
        ids = torch.zeros(1, 2, dtype=torch.long)
        past = torch.zeros(n_layers, 1, n_heads, 3, head_dim)
        cross = torch.zeros(n_layers, 1, n_heads, states, head_dim)
        say(f"export: decoder step ({len(model.vocab)} output tokens, {table.numel()} input tokens) -> "
            f"{out / 'decoder.onnx'}")
        _onnx_export(DecoderGraph(model, table).eval(), (ids, past, past, cross, cross), out / "decoder.onnx",
                     ["input_index", "self_keys", "self_values", "cross_keys", "cross_values"],
                     ["logits", "new_self_keys", "new_self_values"],
                     {"input_index": {0: "batch", 1: "new"}, "self_keys": {1: "batch", 3: "past"},
                      "self_values": {1: "batch", 3: "past"}, "cross_keys": {1: "batch"},
                      "cross_values": {1: "batch"}, "logits": {0: "batch", 1: "new"},
                      "new_self_keys": {1: "batch", 3: "total"}, "new_self_values": {1: "batch", 3: "total"}})

    precisions = ["fp32"]
    if quantize == "int8":
        say("export: int8 dynamic quantisation (onnxruntime)")
        quantize_int8(out)
        precisions.append("int8")
    model.tokenizer.save_pretrained(out)
    meta = {
        "format": EXPORT_FORMAT, "version": EXPORT_VERSION, "opset": OPSET, "precisions": precisions,
        "context_seconds": model.context_seconds, "n_frames": model.n_frames, "n_mels": cfg.num_mel_bins,
        "d_model": cfg.d_model, "decoder_layers": n_layers, "decoder_heads": n_heads, "head_dim": head_dim,
        "encoder_positions": states, "max_target_positions": cfg.max_target_positions,
        "slu_prefix": list(model.slu_prefix), "eot_id": model.eot_id, "vocab_size": model.vocab.vocab_size,
        "output_token_ids": model.vocab.ids.tolist(), "input_token_ids": table.tolist(),
    }
    (out / EXPORT_CONFIG).write_text(json.dumps(meta))
    if model.nlu is not None:      # the text second pass travels with the export
        model.nlu.save(out)
    if verify:
        for precision in precisions:
            report = verify_export(model, out, precision=precision)
            say(f"export: verified {precision}: " + ", ".join(f"{k}={v:.2e}" if isinstance(v, float) else f"{k}={v}"
                                                             for k, v in report.items()))
    return out


def quantize_int8(folder: Path) -> None:
    """encoder/decoder.onnx -> *.int8.onnx: int8 weights (per output channel), activations quantised on the fly.

    The first encoder layer stays fp32: Whisper's early activations have outliers, and quantising that
    layer alone caused most of the int8 error on real weights (max |state error| ~11 with it, ~2 without;
    measured on a fine-tuned tiny.en, 8 test clips). Only MatMuls with a constant weight are quantised.
    """
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)   # its "consider pre-processing" advice is for static quantisation
    try:
        for name in ("encoder", "decoder"):
            source = folder / f"{name}.onnx"
            graph = onnx.load(str(source), load_external_data=False).graph
            constants = {t.name for t in graph.initializer}
            nodes = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm")
                     and any(i in constants for i in n.input[1:2])
                     and not (name == "encoder" and "layers.0/" in n.name)]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantize_dynamic(str(source), str(folder / f"{name}.int8.onnx"), weight_type=QuantType.QInt8,
                                 op_types_to_quantize=["MatMul", "Gemm"], nodes_to_quantize=nodes, per_channel=True)
    finally:
        root.setLevel(level)


# ==================================================================================================
# Verification: exported == eager
# ==================================================================================================

@torch.no_grad()
def compare_outputs(model: SLUModel, runtime: OnnxSLU, mels: torch.Tensor, targets: Sequence[str] | None = None,
                    max_new_tokens: int = 48) -> dict:
    """Max abs differences of encoder states / teacher-forced logits, and greedy strings, eager vs ONNX.

    ``targets``: frame strings to teacher-force (default: the eager model's own greedy outputs).
    """
    model = model.eval()
    enc = model.encode(mels)
    encoded = runtime.encode(mels)
    eager = [c[0] for c in model.generate(enc, max_new_tokens=max_new_tokens)]
    eager_greedy = [c.text for c in eager]
    onnx_greedy = [c[0].text for c in runtime.generate(encoded, max_new_tokens=max_new_tokens)]
    # The model's own token ids (re-tokenising decoded text need not give the same ids).
    seqs = model.tokenize(list(targets)) if targets is not None else [list(c.token_ids) or [model.eot_id] for c in eager]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), len(model.slu_prefix) + width), model.eot_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(model.slu_prefix) + len(s)] = torch.tensor(model.slu_prefix + s)
    rows = torch.arange(len(seqs)) % enc.shape[0]
    hidden = model.whisper.model.decoder(input_ids=ids, encoder_hidden_states=enc[rows], use_cache=False).last_hidden_state
    eager_logits = model.restricted_logits(hidden).numpy()
    sub = OnnxEncoded(encoded.states[rows.numpy()], encoded.cross_keys[:, rows.numpy()],
                      encoded.cross_values[:, rows.numpy()])
    onnx_logits = runtime.decoder_logits(ids.numpy(), sub)
    return {
        "encoder_max_abs_diff": float(np.abs(enc.numpy() - encoded.states).max()),
        "encoder_scale": float(np.abs(enc.numpy()).max()),
        "logits_max_abs_diff": float(np.abs(eager_logits - onnx_logits).max()),
        "logits_scale": float(np.abs(eager_logits).max()),
        "greedy_equal": sum(a == b for a, b in zip(eager_greedy, onnx_greedy)),
        "n": len(eager_greedy),
        "eager_greedy": eager_greedy,
        "onnx_greedy": onnx_greedy,
    }


def verify_export(model: SLUModel, folder: Path, precision: str = "fp32", seed: int = 0) -> dict:
    """Self-check after export on two pseudo-random log-mel inputs. fp32 must match eager (atol 1e-3 on
    encoder states and logits, identical greedy strings); int8 is only reported (it is an approximation)."""
    runtime = OnnxSLU(folder, precision=precision)
    g = torch.Generator().manual_seed(seed)
    mels = (torch.rand(2, model.config.num_mel_bins, model.n_frames, generator=g) * 2 - 1)
    report = compare_outputs(model, runtime, mels, max_new_tokens=24)
    summary = {k: report[k] for k in ("encoder_max_abs_diff", "logits_max_abs_diff")}
    summary["greedy_equal"] = f"{report['greedy_equal']}/{report['n']}"
    if precision == "fp32":
        tol_enc = 1e-3 * max(1.0, report["encoder_scale"])
        tol_log = 1e-3 * max(1.0, report["logits_scale"])
        if (report["encoder_max_abs_diff"] > tol_enc or report["logits_max_abs_diff"] > tol_log
                or report["greedy_equal"] != report["n"]):
            raise ExportError(f"{folder}: exported graphs disagree with the eager model ({summary}); "
                              "this is a bug in assistant.export — please report it")
    return summary


# ==================================================================================================
# CLI
# ==================================================================================================

@dataclass
class ExportConfig:
    model: str | None = field(default=None, metadata={
        "help": "model folder (saved by `assistant train`/`rsft`); none or tiny.en = the packaged Whisper tiny.en, "
                "base = packaged base"})
    format: str = field(default="onnx", metadata={"help": "export format: onnx"})
    quantize: str | None = field(default=None, metadata={
        "help": "int8: also write int8 dynamic-quantised graphs (*.int8.onnx); none: fp32 only"})
    out: str | None = field(default=None, metadata={"help": "output folder (required)"})
    verify: bool = field(default=True, metadata={"help": "the exported-vs-eager self-check; false skips it"})

    def validate(self) -> None:
        if self.format != "onnx":
            raise ValueError(f"--format {self.format!r}: only 'onnx' is supported")
        if self.quantize not in (None, "int8"):
            raise ValueError(f"--quantize {self.quantize!r}: pass int8, or none for fp32 only")
        if not self.out:
            raise ValueError("--out is required: pass --out DIR, the folder to write the export to")


def cli(argv: list[str]) -> int:
    cfg = parse_command(ExportConfig, "assistant export", __doc__, argv)

    from assistant.model.packaged import is_packaged_name     # the eager model: only to export one
    from assistant.nlu import load_pipeline

    if cfg.model and not is_packaged_name(cfg.model) and not Path(cfg.model).is_dir():
        print(f"assistant export: model folder not found: {cfg.model} "
              "(train one with `assistant train`, or omit --model for the packaged Whisper tiny.en)", file=sys.stderr)
        return 2
    start = time.perf_counter()
    model = load_pipeline(cfg.model or None)
    try:
        out = export_onnx(model, cfg.out, quantize=cfg.quantize, verify=cfg.verify)
    except ExportError as e:
        print(f"assistant export: {e}", file=sys.stderr)
        return 1
    sizes = ", ".join(f"{p.name} {p.stat().st_size / 1e6:.1f} MB" for p in sorted(out.glob("*.onnx")))
    print(f"export: wrote {out} ({sizes}) in {time.perf_counter() - start:.1f} s")
    return 0
