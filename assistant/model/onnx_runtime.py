"""The ONNX runtime of an exported SLU model (``assistant export``): greedy and sampled decoding on onnxruntime.

``OnnxSLU`` is a ``SpeechModel`` (assistant.model.interface) like ``SLUModel``; load it with its text pass
through ``assistant.nlu.load_pipeline(folder, runtime="onnx" | "onnx-int8")``. The graphs and the export
itself live in ``assistant.export``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from assistant.model.candidate import Candidate
from assistant.model.decoding import TokenText
from assistant.model.stock import STOCK_CONTEXT_SECONDS
from assistant.model.vocab import OutputVocab

EXPORT_FORMAT = "assistant-onnx-slu"
EXPORT_VERSION = 1
EXPORT_CONFIG = "export.json"
PRECISIONS = ("fp32", "int8")


class ExportError(ValueError):
    """An export folder or request that cannot be used; the message names the file and the fix."""


@dataclass
class OnnxEncoded:
    """What the encoder graph returns for a batch: states (for inspection) + decoder cross K/V."""

    states: np.ndarray        # [B, S, d]
    cross_keys: np.ndarray    # [L, B, H, S, hd]
    cross_values: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.states.shape)

    def __len__(self) -> int:
        return int(self.states.shape[0])

    def rows(self, index) -> "OnnxEncoded":
        return OnnxEncoded(self.states[index], self.cross_keys[:, index], self.cross_values[:, index])

    def repeat(self, times: int) -> "OnnxEncoded":
        """Each utterance's states ``times`` times in a row (its decoder rows: greedy, then the samples)."""
        if times == 1:
            return self
        return OnnxEncoded(np.repeat(self.states, times, axis=0), np.repeat(self.cross_keys, times, axis=1),
                           np.repeat(self.cross_values, times, axis=1))


class OnnxSLU(TokenText):
    """SLU inference on onnxruntime (CPU): greedy decoding equal to ``SLUModel``'s, sampling from the same
    distribution.

    A ``SpeechModel`` (assistant.model.interface) like SLUModel, so ``assistant.inference.predict_waves``
    / ``predict_files``, the demo and the benchmarks run on it unchanged::

        model = OnnxSLU("runs/export/onnx")
        preds = predict_files(model, ["clip.wav"], schema)

    What it cannot do: truncated sampling (top-p / top-k) and the stock reading (the export merges the
    adapters: ``has_stock_path`` is False).
    """

    has_stock_path = False   # the export merges the adapters: the stock reading is not available

    def __init__(self, folder: str | Path, precision: str = "fp32", threads: int | None = None):
        import onnxruntime as ort
        from transformers import WhisperTokenizerFast

        self.folder = Path(folder)
        meta = read_export_config(self.folder)
        if precision not in PRECISIONS:
            raise ExportError(f"precision {precision!r}: choose one of {PRECISIONS}")
        if precision not in meta["precisions"]:
            raise ExportError(f"{self.folder}: no {precision} graphs; re-export with "
                              f"`assistant export ... --quantize int8`")
        self.meta, self.precision = meta, precision
        suffix = "" if precision == "fp32" else f".{precision}"
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads) if threads else torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(str(self.folder / f"encoder{suffix}.onnx"), options, providers=providers)
        self.decoder = ort.InferenceSession(str(self.folder / f"decoder{suffix}.onnx"), options, providers=providers)
        self.tokenizer = WhisperTokenizerFast.from_pretrained(str(self.folder))
        self.context_seconds = float(meta["context_seconds"])
        self.n_frames = int(meta["n_frames"])
        self.slu_prefix = [int(t) for t in meta["slu_prefix"]]
        self.eot_id = int(meta["eot_id"])
        self.vocab = OutputVocab(meta["output_token_ids"], int(meta["vocab_size"]), self.eot_id)
        self.output_ids = np.asarray(meta["output_token_ids"], dtype=np.int64)
        self.input_ids = np.asarray(meta["input_token_ids"], dtype=np.int64)
        self.input_index_of = np.full(int(meta["vocab_size"]), -1, dtype=np.int64)
        self.input_index_of[self.input_ids] = np.arange(len(self.input_ids))
        self.eot_index = int(np.searchsorted(self.output_ids, self.eot_id))
        self.training = False
        self.nlu = None      # the text second pass: assistant.nlu.load_pipeline(folder, runtime="onnx") sets it

    # ------------------------------------------------------------------ the SpeechModel interface
    def eval(self) -> "OnnxSLU":
        return self

    def train(self, mode: bool = True) -> "OnnxSLU":
        return self

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def features(self, waves: Sequence[torch.Tensor]) -> torch.Tensor:
        """Same front end as SLUModel.features (Whisper log-mel, padded/cut to the context)."""
        from assistant.features import context_log_mel

        return context_log_mel(waves, self.n_frames, self.context_seconds)

    def encode(self, mels) -> OnnxEncoded:
        mels = mels.detach().cpu().numpy() if torch.is_tensor(mels) else np.asarray(mels)
        expected = (int(self.meta["n_mels"]), self.n_frames)
        if mels.ndim != 3 or tuple(mels.shape[1:]) != expected:
            raise ValueError(f"encode expects log-mels [B, {expected[0]}, {expected[1]}] (the model's "
                             f"{self.context_seconds:g} s context), got {tuple(mels.shape)}; use features()")
        states, keys, values = self.encoder.run(None, {"mels": np.ascontiguousarray(mels, dtype=np.float32)})
        return OnnxEncoded(states, keys, values)

    def decoder_logits(self, token_ids: np.ndarray, encoded: OnnxEncoded) -> np.ndarray:
        """Teacher-forced restricted logits [B, n, V_sub] for full-vocabulary token ids [B, n] (no cache)."""
        token_ids = np.asarray(token_ids, dtype=np.int64)
        empty = self._empty_cache(token_ids.shape[0])
        logits, _, _ = self._step(self._to_input_index(token_ids), empty, empty,
                                  encoded.cross_keys, encoded.cross_values)
        return logits

    def generate(self, encoded: OnnxEncoded, num_samples: int = 0, greedy: bool = True, temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0, max_new_tokens: int = 96, seed: int | None = None,
                 max_rows: int = 32) -> list[list[Candidate]]:
        """Greedy and/or ``num_samples`` sampled frame strings per utterance, distinct texts, greedy first, as
        ``SLUModel.generate`` returns them (the text pass's n-best samples through here). Sampling draws from
        softmax(logits / temperature) with numpy's generator (``seed``): the same distribution as the eager
        model, another random stream; top-p / top-k truncation is eager-only. Utterances are decoded
        ``max_rows // (greedy + num_samples)`` at a time: each decoder row carries its own copy of the
        cross-attention K/V, and at batch 16 with the n-best (144 rows) one group peaked at 3.9 GB RSS and
        ran slower than groups of 32 rows (1.65 GB; `assistant bench`'s memory probe)."""
        if num_samples < 0 or (num_samples == 0 and not greedy):
            raise ValueError("generate: ask for greedy=True and/or num_samples > 0")
        if num_samples and (temperature <= 0 or top_p != 1.0 or top_k):
            raise ExportError("OnnxSLU samples at a temperature > 0 without top-p / top-k truncation; "
                              "use SLUModel for truncated sampling")
        per_utt = int(greedy) + num_samples
        max_new_tokens = min(max_new_tokens, int(self.meta["max_target_positions"]) - len(self.slu_prefix))
        rng = np.random.default_rng(seed)
        out: list[list[Candidate]] = []
        group = max(1, max_rows // per_utt)
        for start in range(0, len(encoded), group):
            part = encoded.rows(slice(start, start + group))
            is_greedy = np.zeros((len(part), per_utt), dtype=bool)
            is_greedy[:, 0] = greedy
            is_greedy = is_greedy.reshape(-1)
            tokens, logprob, finished = self._decode_rows(part.repeat(per_utt), is_greedy, temperature,
                                                          max_new_tokens, rng)
            out += self.collect_candidates(tokens, logprob, finished, is_greedy, len(part), per_utt)
        return out

    def _decode_rows(self, encoded: OnnxEncoded, is_greedy: np.ndarray, temperature: float, max_new_tokens: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Decoding with the KV cache, greedy rows by argmax and the others sampled: tokens [n,
        max_new_tokens] (<|endoftext|>-padded), each row's T=1 log-prob and whether it finished; finished
        rows leave the decoder batch."""
        n = len(encoded)
        tokens = np.full((n, max_new_tokens), self.eot_id, dtype=np.int64)
        logprob = np.zeros(n, dtype=np.float64)
        finished = np.zeros(n, dtype=bool)
        prompt = np.tile(self._to_input_index(np.asarray([self.slu_prefix])), (n, 1))
        empty = self._empty_cache(n)
        cross_k, cross_v = encoded.cross_keys, encoded.cross_values
        logits, keys, values = self._step(prompt, empty, empty, cross_k, cross_v)
        alive = np.arange(n)
        for step in range(max_new_tokens):
            last = logits[:, -1].astype(np.float32)
            logp = last - _logsumexp(last)
            choice = last.argmax(axis=-1)
            drawn = ~is_greedy[alive]
            if drawn.any():
                choice[drawn] = _sample(last[drawn] / temperature, rng)
            logprob[alive] += logp[np.arange(len(alive)), choice]
            tokens[alive, step] = self.output_ids[choice]
            done = choice == self.eot_index
            finished[alive[done]] = True
            if finished.all() or step == max_new_tokens - 1:
                break
            if done.any():   # drop finished rows: smaller decoder batch, smaller caches
                keep = ~done
                alive, choice = alive[keep], choice[keep]
                keys, values = keys[:, keep], values[:, keep]
                cross_k, cross_v = cross_k[:, keep], cross_v[:, keep]
            next_index = self.input_index_of[self.output_ids[choice]][:, None]
            logits, keys, values = self._step(next_index, keys, values, cross_k, cross_v)
        return tokens, logprob, finished

    def sequence_logprobs(self, encoded: OnnxEncoded, texts: Sequence[str] | Sequence[Sequence[int]],
                          expand: Sequence[int] | None = None) -> torch.Tensor:
        """Sum log-prob of each text + <|endoftext|> over the restricted vocabulary, as
        ``SLUModel.sequence_logprobs`` computes it (the text second pass needs it); -inf for a text this
        export cannot spell. ``texts``: strings or token-id lists; ``expand``: the encoder row of each."""
        rows = list(range(len(texts))) if expand is None else [int(r) for r in expand]
        out = np.full(len(texts), -np.inf)
        for i, (seq, row) in enumerate(zip(self.token_sequences(texts), rows)):
            target = np.asarray(seq + [self.eot_id], dtype=np.int64)
            position = np.searchsorted(self.output_ids, target).clip(max=len(self.output_ids) - 1)
            inputs = np.asarray([self.slu_prefix + seq], dtype=np.int64)
            if (self.output_ids[position] != target).any() or inputs.shape[1] > int(self.meta["max_target_positions"]) \
                    or (self.input_index_of[inputs] < 0).any():
                continue
            one = OnnxEncoded(encoded.states[row:row + 1], encoded.cross_keys[:, row:row + 1],
                              encoded.cross_values[:, row:row + 1])
            logits = self.decoder_logits(inputs, one)[0, len(self.slu_prefix) - 1:].astype(np.float64)
            logp = logits - _logsumexp(logits)
            out[i] = float(logp[np.arange(len(target)), position].sum())
        return torch.from_numpy(out)

    def stock_encode(self, waves: Sequence[torch.Tensor], context_seconds: float = STOCK_CONTEXT_SECONDS
                     ) -> torch.Tensor:
        raise self._no_stock_path()

    def stock_greedy(self, stock_enc: torch.Tensor, max_new_tokens: int = 48) -> list[str]:
        raise self._no_stock_path()

    # ------------------------------------------------------------------ internals
    def _no_stock_path(self) -> ExportError:
        return ExportError(f"{self.folder}: an export has no stock reading (the adapters are merged into it); "
                           "callers check has_stock_path first, or use the eager model folder")

    def _empty_cache(self, n: int) -> np.ndarray:
        m = self.meta
        return np.zeros((m["decoder_layers"], n, m["decoder_heads"], 0, m["head_dim"]), dtype=np.float32)

    def _to_input_index(self, token_ids: np.ndarray) -> np.ndarray:
        index = self.input_index_of[token_ids]
        if (index < 0).any():
            bad = sorted(set(token_ids[index < 0].tolist()))
            raise ExportError(f"tokens {bad[:10]} are outside this export's decoder vocabulary")
        return index

    def _step(self, input_index, keys, values, cross_k, cross_v):
        return self.decoder.run(None, {"input_index": np.ascontiguousarray(input_index, dtype=np.int64),
                                       "self_keys": keys, "self_values": values,
                                       "cross_keys": np.ascontiguousarray(cross_k),
                                       "cross_values": np.ascontiguousarray(cross_v)})


def _sample(logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One index per row drawn from softmax(logits) (inverse CDF)."""
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    cdf = np.cumsum(probs, axis=-1)
    u = rng.random(len(logits))[:, None] * cdf[:, -1:]
    return np.minimum((cdf < u).sum(axis=-1), logits.shape[-1] - 1)


def _logsumexp(x: np.ndarray) -> np.ndarray:
    peak = x.max(axis=-1, keepdims=True)
    return peak + np.log(np.exp(x - peak).sum(axis=-1, keepdims=True))


def read_export_config(folder: Path) -> dict:
    path = Path(folder) / EXPORT_CONFIG
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise ExportError(f"{path}: missing; {folder} is not an export folder — run "
                          "`assistant export --model DIR --format onnx --out DIR` first") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ExportError(f"{path}: unreadable ({e}); re-run `assistant export`") from None
    if meta.get("format") != EXPORT_FORMAT or meta.get("version") != EXPORT_VERSION:
        raise ExportError(f"{path}: not a version-{EXPORT_VERSION} {EXPORT_FORMAT} export; re-run `assistant export`")
    return meta
