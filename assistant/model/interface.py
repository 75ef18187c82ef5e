"""``SpeechModel``: what the rest of the project needs from a speech-to-frame model.

Two implementations: the eager ``SLUModel`` (assistant.model.slu: training, sampling, the stock
reading) and the ONNX runtime ``OnnxSLU`` (assistant.model.onnx_runtime: greedy decoding on onnxruntime, no stock
reading). Inference (``assistant.inference``), the demo, the benchmarks, the text second pass
(``assistant.nlu``) and RSFT's candidates and readings take either; the training loop and RSFT's
reference scoring need ``SLUModel`` itself.

The encoder output is the model's own type (a tensor for SLUModel, ``OnnxEncoded`` for OnnxSLU): pass
what ``encode`` returned to ``generate`` and ``sequence_logprobs`` of the same model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

from assistant.model.candidate import Candidate

if TYPE_CHECKING:
    import torch

    from assistant.model.vocab import OutputVocab


@runtime_checkable
class SpeechModel(Protocol):
    """Audio -> encoder output -> ``Candidate`` frames, and the scores and facts callers read."""

    tokenizer: Any                  # the Whisper tokenizer (``tokenize`` / ``decode_tokens`` use it)
    vocab: OutputVocab              # the restricted output vocabulary (ids the decoder can write)
    context_seconds: float          # audio the encoder hears; longer clips are cut (``features``)
    n_frames: int                   # log-mel frames of that context
    slu_prefix: list[int]           # the prompt SLU frames are decoded behind
    eot_id: int                     # <|endoftext|>: a finished candidate's last scored token
    nlu: Any                        # the text second pass (assistant.nlu.NluPass) or None
    training: bool

    @property
    def device(self) -> torch.device: ...

    @property
    def has_stock_path(self) -> bool:
        """Whether ``stock_encode`` / ``stock_greedy`` run the pretrained Whisper (adapters off)."""
        ...

    def eval(self) -> Any: ...

    def train(self, mode: bool = True) -> Any: ...

    def features(self, waves: Sequence[torch.Tensor]) -> torch.Tensor:
        """16 kHz mono waves -> log-mels [B, 80, n_frames] (padded / cut to the context)."""
        ...

    def encode(self, mels: torch.Tensor) -> Any:
        """Log-mels -> the encoder output ``generate`` and ``sequence_logprobs`` take."""
        ...

    def generate(self, encoder_out: Any, num_samples: int = 0, greedy: bool = True, temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0, max_new_tokens: int = 96, seed: int | None = None,
                 max_rows: int = 512) -> list[list[Candidate]]:
        """Per utterance: distinct candidates, greedy first; ``Candidate.finished`` is False for one cut
        off at ``max_new_tokens`` (its frame cannot be trusted); ``Candidate.logprob`` the model's own
        T=1 log-prob of ``token_ids`` (+ <|endoftext|> when finished)."""
        ...

    def sequence_logprobs(self, encoder_out: Any, texts: Sequence[str] | Sequence[Sequence[int]],
                          expand: Sequence[int] | None = None) -> torch.Tensor:
        """Sum log-prob of each text (or token-id list) + <|endoftext|> -> [N]; -inf where the model
        cannot write it. ``expand``: the encoder row of each text (None: one text per row)."""
        ...

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text as the decoder writes it."""
        ...

    def decode_tokens(self, token_ids: Sequence[int]) -> str: ...

    def stock_encode(self, waves: Sequence[torch.Tensor]) -> Any:
        """Encoder states of the pretrained model over Whisper's 30 s window (needs ``has_stock_path``)."""
        ...

    def stock_greedy(self, stock_enc: Any, max_new_tokens: int = 48) -> list[str]:
        """Stock Whisper's greedy transcript of each clip (needs ``has_stock_path``)."""
        ...
