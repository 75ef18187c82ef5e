"""Whisper's encoder run piece by piece: conv front end + positions, the layers, the position table.

One copy of the arithmetic for every path that runs the encoder outside transformers' own forward: the
frozen trunk / trained head split (``SLUModel.encode_trunk`` / ``encode_head``), stock Whisper's 30 s
window (``SLUModel.stock_encode``) and the exported encoder graph (``assistant.export.EncoderGraph``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from assistant.features import FRAMES_PER_SECOND


def front_end(encoder: nn.Module, mels: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Log-mels [B, 80, F] -> conv front end + the first F/2 rows of the position ``table``: [B, F/2, d]."""
    x = F.gelu(encoder.conv1(mels))
    x = F.gelu(encoder.conv2(x)).permute(0, 2, 1)
    return x + table[: x.shape[1]]


def run_layers(layers, x: torch.Tensor) -> torch.Tensor:
    """Encoder ``layers`` in turn (no attention mask; transformers returns a tensor or a tuple per layer)."""
    for layer in layers:
        out = layer(x, None)
        x = out[0] if isinstance(out, tuple) else out
    return x


def position_table(table: torch.Tensor, positions: int) -> torch.Tensor:
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
