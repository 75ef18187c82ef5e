"""LoRA adapters that switch off for the stock ASR prompt, so fine-tuning cannot hurt Whisper's own ASR.

Full fine-tuning on a few thousand synthetic commands turns Whisper into a command-domain model: on real
human speech its plain transcripts degrade (WER 0.05 -> 0.43 for tiny.en, README). With adapters the
pretrained weights stay exactly as they were; each adapted ``nn.Linear`` gets a low-rank update

    y = W x + b + (alpha / rank) * B (A x)          (B starts at 0: training starts from the stock model)

that is active for the SLU task and off inside ``gate.off()`` (``SLUModel.transcribe`` uses it), where
the model is bit-for-bit the stock checkpoint. The adapters live outside the Whisper module (forward
hooks, not module surgery), so the Whisper state dict and ``save_pretrained`` folder stay plain
Hugging Face; the adapter weights go to ``adapters.safetensors`` next to them.

``merge_into_base`` folds them into the weights (faster inference; the stock path is then gone): the ONNX
export does this on a copy.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field
from typing import Iterator

import torch
from torch import nn

ADAPTER_FILE = "adapters.safetensors"
ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")
MLP = ("fc1", "fc2")


@dataclass
class LoraConfig:
    rank: int = 32
    alpha: float = 32.0
    encoder_from: int = 2            # encoder layers >= this get adapters (the cached frozen trunk does not)
    modules: list[str] = field(default_factory=lambda: [*ATTENTION, *MLP])   # Linear names inside each layer

    def validate(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if not self.alpha > 0:
            raise ValueError(f"LoRA alpha must be > 0, got {self.alpha}")
        if self.encoder_from < 0:
            raise ValueError(f"LoRA encoder_from must be >= 0, got {self.encoder_from}")
        unknown = sorted(set(self.modules) - set(ATTENTION) - set(MLP))
        if unknown or not self.modules:
            raise ValueError(f"LoRA modules must be a non-empty subset of {[*ATTENTION, *MLP]}, got {self.modules}")

    def to_dict(self) -> dict:
        return asdict(self)


class Gate:
    """Shared on/off switch of all adapters of one model (an object, so deepcopy keeps it shared)."""

    def __init__(self) -> None:
        self.active = True

    @contextlib.contextmanager
    def off(self) -> Iterator[None]:
        saved, self.active = self.active, False
        try:
            yield
        finally:
            self.active = saved


class LoraAdapter(nn.Module):
    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float):
        super().__init__()
        self.scale = alpha / rank
        self.A = nn.Parameter(torch.empty(rank, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))

    def delta(self) -> torch.Tensor:
        """The full-rank update B A * scale, [out, in]."""
        return (self.B @ self.A) * self.scale


class AdapterHook:
    """Forward hook adding the adapter's output; a plain object (not a closure) so deepcopy remaps it.
    The fast decoder (``assistant.model.sampler``) recognises these hooks and folds them into the weights."""

    def __init__(self, adapter: LoraAdapter, gate: Gate):
        self.adapter, self.gate = adapter, gate

    def __call__(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if not self.gate.active:
            return output
        x = inputs[0]
        return output + (x @ self.adapter.A.t() @ self.adapter.B.t()) * self.adapter.scale


def adapter_targets(whisper: nn.Module, cfg: LoraConfig) -> dict[str, nn.Linear]:
    """Adapter key -> Linear: every decoder layer, the encoder layers from ``encoder_from`` on."""
    out: dict[str, nn.Linear] = {}
    model = whisper.model
    for side, layers, first in (("encoder", model.encoder.layers, cfg.encoder_from), ("decoder", model.decoder.layers, 0)):
        for i, layer in enumerate(layers):
            if i < first:
                continue
            for path, module in layer.named_modules():
                if isinstance(module, nn.Linear) and path.split(".")[-1] in cfg.modules:
                    out[f"{side}_{i}_{path.replace('.', '_')}"] = module
    return out


def adapter_layer(key: str) -> tuple[str, int]:
    """("encoder" | "decoder", layer index) of an adapter key made by ``adapter_targets``."""
    side, index = key.split("_")[:2]
    return side, int(index)


def attach_adapters(whisper: nn.Module, cfg: LoraConfig, gate: Gate) -> nn.ModuleDict:
    """Create adapters for ``whisper`` and hook them in."""
    cfg.validate()
    adapters = nn.ModuleDict()
    targets = adapter_targets(whisper, cfg)
    if not targets:
        raise ValueError(f"LoRA: no Linear layers matched {cfg.modules} (encoder_from={cfg.encoder_from})")
    for key, linear in targets.items():
        weight = linear.weight
        adapter = LoraAdapter(linear.in_features, linear.out_features, cfg.rank, cfg.alpha).to(weight.device, weight.dtype)
        adapters[key] = adapter
        linear.register_forward_hook(AdapterHook(adapter, gate))
    return adapters


@torch.no_grad()
def merge_into_base(whisper: nn.Module, adapters: nn.ModuleDict, cfg: LoraConfig) -> None:
    """W += scale * B A for every adapter and remove the hooks (SLU outputs unchanged, stock path gone)."""
    targets = adapter_targets(whisper, cfg)
    for key, adapter in adapters.items():
        targets[key].weight += adapter.delta().to(targets[key].weight.dtype)
    for module in whisper.modules():       # by type, not by handle: handles do not survive deepcopy
        for hook_id, hook in list(module._forward_hooks.items()):
            if isinstance(hook, AdapterHook):
                del module._forward_hooks[hook_id]
