"""LoRA adapters (through ``peft``) that switch off for the stock ASR prompt, so fine-tuning cannot hurt
Whisper's own ASR.

Full fine-tuning on a few thousand synthetic commands turns Whisper into a command-domain model: on real
human speech its plain transcripts degrade (WER 0.05 -> 0.43 for tiny.en, README). With adapters the
pretrained weights stay exactly as they were; each adapted ``nn.Linear`` gets a low-rank update

    y = W x + b + (alpha / rank) * B (A x)          (B starts at 0: training starts from the stock model)

that is active for the SLU task and off inside ``LoraAdapters.off()`` (peft's ``disable_adapter()``;
``SLUModel.stock`` uses it), where the model is bit-for-bit the stock checkpoint.

``peft`` replaces each adapted Linear of the SLU model's Whisper module in place by its ``lora.Linear``
(the pretrained Linear is its ``base_layer``), so every module path (``whisper.model.encoder.layers``, ...)
stays as it was. Saved folders hold a plain Hugging Face Whisper checkpoint (the base weights under
their own names) and, in ``lora/``, peft's standard files ``adapter_config.json`` +
``adapter_model.safetensors``: ``PeftModel.from_pretrained(WhisperForConditionalGeneration
.from_pretrained(folder), folder / "lora")`` loads the fine-tuned model outside this project. (A subfolder:
transformers loads adapter files found beside a checkpoint's config into the model itself, and the
folder's Whisper must stay the stock one.) Folders of the hand-written adapters that came before
(``adapters.safetensors`` beside the checkpoint) still load: their tensors are converted.

``LoraAdapters.merge`` folds the adapters into the weights (peft's ``merge_and_unload``; faster inference,
the stock path is then gone): the ONNX export does this on a copy. peft is imported on first use.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ContextManager, Iterator

import torch
from torch import nn

ADAPTER_DIR = "lora"                                # peft's adapter folder inside a saved model folder
ADAPTER_CONFIG_FILE = "adapter_config.json"         # peft's names
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
LEGACY_ADAPTER_FILE = "adapters.safetensors"        # the hand-written adapters before peft: converted on load
ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")
MLP = ("fc1", "fc2")
PEFT_PREFIX = "base_model.model."                   # peft's saved keys: the Whisper module path behind this


@dataclass
class LoraConfig:
    """The adapters as users write them (YAML, ``slu_config.json``); ``to_peft`` gives peft's config."""

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

    def target_pattern(self, encoder_layers: int) -> str:
        """peft's ``target_modules`` (a regex over module paths in the Whisper module): the ``modules``
        Linears of every decoder layer and of the encoder layers from ``encoder_from`` on."""
        names = "|".join(re.escape(m) for m in self.modules)
        sides = [r"decoder\.layers\.\d+"]
        if self.encoder_from < encoder_layers:
            indices = "|".join(str(i) for i in range(self.encoder_from, encoder_layers))
            sides.insert(0, rf"encoder\.layers\.(?:{indices})")
        return rf"model\.(?:{'|'.join(sides)})\.(?:\w+\.)?(?:{names})"

    def to_peft(self, encoder_layers: int):
        """peft's LoraConfig: scaling ``lora_alpha / r`` = our ``alpha / rank``, no dropout, no bias,
        A Kaiming-uniform and B zero at the start (peft's default init, as ours was)."""
        from peft import LoraConfig as PeftLoraConfig

        return PeftLoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=0.0, bias="none",
                              target_modules=self.target_pattern(encoder_layers))


def adapter_layer(name: str) -> tuple[str, int]:
    """("encoder" | "decoder", layer index) of a module or parameter path in the Whisper module
    (``model.encoder.layers.3.fc1.lora_A.default.weight`` -> ("encoder", 3))."""
    match = re.search(r"(encoder|decoder)\.layers\.(\d+)(?:\.|$)", name)
    if match is None:
        raise ValueError(f"{name}: not inside an encoder or decoder layer")
    return match.group(1), int(match.group(2))


def _peft_lora_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a peft LoRA layer (without importing peft: none exist before it is loaded)."""
    layer = sys.modules.get("peft.tuners.lora.layer")
    return layer is not None and isinstance(module, layer.LoraLayer)


def foldable(module: nn.Module) -> bool:
    """Whether ``linear_params`` can fold ``module``: a plain Linear, or a peft LoRA layer of plain LoRA
    (not DoRA or another variant, no LoRA bias, no dropout while training, no hooks on its pretrained
    Linear)."""
    if not _peft_lora_layer(module):
        return True
    base = module.get_base_layer()
    variants = (*getattr(module, "lora_variant", {}).values(), *getattr(module, "use_dora", {}).values())
    if base._forward_hooks or base._forward_pre_hooks or any(variants):
        return False
    return not any(getattr(module, "lora_bias", {}).get(name) or
                   (module.training and not isinstance(module.lora_dropout[name], nn.Identity))
                   for name in module.active_adapters if name in module.lora_A)


def linear_params(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of a ``foldable`` Linear as its forward computes them now: a peft LoRA layer's base
    weight plus ``scale * B A`` of its active adapters (nothing while they are disabled or merged), a plain
    Linear's own."""
    if not _peft_lora_layer(module):
        return module.weight, module.bias
    base = module.get_base_layer()
    weight = base.weight
    if not (module.disable_adapters or module.merged):
        for name in module.active_adapters:
            if name in module.lora_A:
                weight = weight + module.get_delta_weight(name).to(weight.dtype)
    return weight, base.bias


def base_state_dict(whisper: nn.Module) -> dict[str, torch.Tensor]:
    """The Whisper module's state dict without its adapters, under the pretrained names: what
    ``save_pretrained`` writes, so the folder stays a plain Hugging Face checkpoint."""
    out = {}
    for key, value in whisper.state_dict().items():
        if re.search(r"\.lora_\w+\.", key):
            continue
        out[key.replace(".base_layer.", ".")] = value
    return out


class LoraAdapters:
    """peft's ``PeftModel`` around the SLU model's Whisper module, which peft changed in place.

    A plain object, not a submodule of the SLU model: the adapter weights are parameters of the Whisper
    module already (``whisper.model.decoder.layers.0.fc1.lora_A.default.weight``), so the SLU model's
    state dict, ``.to`` and optimizer see each of them once. ``copy.deepcopy`` of the SLU model copies
    this object along and keeps it wrapping the copied Whisper module."""

    def __init__(self, whisper: nn.Module, cfg: LoraConfig):
        from peft import get_peft_model

        cfg.validate()
        self.config = cfg
        with warnings.catch_warnings():     # transformers 5 deprecates the attribute peft reads here
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            self.peft = get_peft_model(whisper, cfg.to_peft(len(whisper.model.encoder.layers)))

    @property
    def whisper(self) -> nn.Module:
        return self.peft.get_base_model()

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """The adapter weights, named by their path in the Whisper module."""
        for name, p in self.whisper.named_parameters():
            if ".lora_" in name:
                yield name, p

    def parameters(self) -> Iterator[nn.Parameter]:
        return (p for _, p in self.named_parameters())

    def train_encoder_from(self, frozen: int) -> None:
        """Only adapters train: those of the decoder and of encoder layers >= ``frozen``."""
        for name, p in self.named_parameters():
            side, layer = adapter_layer(name)
            p.requires_grad_(side != "encoder" or layer >= frozen)

    @contextlib.contextmanager
    def off(self) -> Iterator[None]:
        """peft's ``disable_adapter()``: the pretrained model exactly (nests: adapters come back on at the
        end of the outermost block only). peft sets every adapter trainable again on the way out; the
        flags ``SLUModel.freeze`` chose are put back."""
        trainable = [(p, p.requires_grad) for p in self.parameters()]
        try:
            with self.peft.disable_adapter():
                yield
        finally:
            for p, flag in trainable:
                p.requires_grad_(flag)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """peft's saved form: ``base_model.model.<path>.lora_A.weight`` / ``.lora_B.weight``."""
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(self.peft)

    def load_state_dict(self, state: dict[str, torch.Tensor], source: Path | str = "adapter weights") -> None:
        """Load weights in peft's saved form; they must be exactly this model's adapters."""
        from peft import set_peft_model_state_dict

        expected = self.state_dict()
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
        if missing or unexpected or wrong:
            raise ValueError(f"{source}: adapters do not match the model (missing {missing[:3]}, unexpected "
                             f"{unexpected[:3]}, other shapes {wrong[:3]}); the file belongs to another model")
        set_peft_model_state_dict(self.peft, state)

    def save(self, folder: Path) -> None:
        """peft's standard files in ``folder`` / lora: adapter_config.json + adapter_model.safetensors
        (written with peft's pieces rather than ``PeftModel.save_pretrained``, which also writes a model
        card README.md into every checkpoint)."""
        from safetensors.torch import save_file

        out = Path(folder) / ADAPTER_DIR
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(out / ADAPTER_WEIGHTS_FILE), metadata={"format": "pt"})
        config = copy.deepcopy(self.peft.peft_config["default"])
        config.inference_mode = True
        base = type(self.whisper)         # as PeftModel.save_pretrained records it (for AutoPeftModel)
        config.save_pretrained(str(out), auto_mapping_dict={"base_model_class": base.__name__,
                                                            "parent_library": base.__module__})
        (Path(folder) / LEGACY_ADAPTER_FILE).unlink(missing_ok=True)

    def load(self, folder: Path) -> None:
        """Weights from a model folder: peft's files in lora/, or the hand-written adapters'
        ``adapters.safetensors``."""
        from safetensors.torch import load_file

        path = adapter_weights_file(folder)
        if path.name == LEGACY_ADAPTER_FILE:
            self.load_state_dict(self.from_legacy(load_file(str(path))), path)
            return
        config = path.parent / ADAPTER_CONFIG_FILE
        saved = json.loads(config.read_text()) if config.is_file() else {}
        if saved and (saved.get("r"), saved.get("lora_alpha")) != (self.config.rank, self.config.alpha):
            raise ValueError(f"{config}: r={saved.get('r')}, lora_alpha={saved.get('lora_alpha')}, but slu_config.json "
                             f"says rank={self.config.rank}, alpha={self.config.alpha}; the files belong to "
                             "different models")
        self.load_state_dict(load_file(str(path)), path)

    def from_legacy(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Hand-written adapters (``encoder_2_self_attn_q_proj.A`` [rank, in], ``.B`` [out, rank]) ->
        peft's saved keys. The same A, B and scale: the converted model computes what the old one did."""
        paths = {}
        for path, module in self.whisper.named_modules():
            if _peft_lora_layer(module):
                side, index = adapter_layer(path)
                inner = path.split(f"{side}.layers.{index}.", 1)[1]
                paths[f"{side}_{index}_{inner.replace('.', '_')}"] = path
        out = {}
        for key, value in tensors.items():
            old, _, part = key.rpartition(".")
            if old in paths and part in ("A", "B"):
                out[f"{PEFT_PREFIX}{paths[old]}.lora_{part}.weight"] = value
            else:
                out[key] = value                # load_state_dict reports it
        return out

    def merge(self) -> nn.Module:
        """Fold the adapters into the weights (W += scale * B A) and unwrap the Linears: the Whisper module,
        plain again (SLU outputs unchanged, the stock path gone)."""
        return self.peft.merge_and_unload()


def adapters_off(adapters: LoraAdapters | None) -> ContextManager[None]:
    """Context with the adapters off (none: nothing to switch)."""
    return adapters.off() if adapters is not None else contextlib.nullcontext()


def adapter_weights_file(folder: Path) -> Path:
    """A model folder's adapter weights: peft's file in lora/, or an older folder's ``adapters.safetensors``."""
    folder = Path(folder)
    for path in (folder / ADAPTER_DIR / ADAPTER_WEIGHTS_FILE, folder / LEGACY_ADAPTER_FILE):
        if path.is_file():
            return path
    raise FileNotFoundError(f"{folder / ADAPTER_DIR / ADAPTER_WEIGHTS_FILE} missing: the folder's slu_config.json "
                            "says the model has LoRA adapters; copy the whole model folder or retrain it")


def save_adapters(adapters: LoraAdapters | None, folder: Path) -> None:
    """Write the adapters into the model folder; without adapters remove stale adapter files."""
    folder = Path(folder)
    if adapters is not None:
        adapters.save(folder)
        return
    for path in (folder / ADAPTER_DIR / ADAPTER_WEIGHTS_FILE, folder / ADAPTER_DIR / ADAPTER_CONFIG_FILE,
                 folder / LEGACY_ADAPTER_FILE):
        path.unlink(missing_ok=True)
    if (folder / ADAPTER_DIR).is_dir() and not any((folder / ADAPTER_DIR).iterdir()):
        (folder / ADAPTER_DIR).rmdir()

