"""The deployed pipeline: a speech model with its text second pass, loaded from one model folder."""

from __future__ import annotations

from pathlib import Path

import torch

from assistant.data.grammar import domain_vocab_texts
from assistant.model.interface import SpeechModel
from assistant.model.io import SLU_CONFIG_FILE
from assistant.model.onnx_runtime import OnnxSLU
from assistant.model.packaged import is_packaged_name
from assistant.model.slu import SLUModel
from assistant.nlu.second_pass import NLU_DIR, NluPass

RUNTIMES = ("eager", "onnx", "onnx-int8")


def load_pipeline(path_or_id: str | Path | None = None, device: str | torch.device = "cpu", runtime: str = "eager",
                  threads: int | None = None, **kwargs) -> SpeechModel:
    """The speech model of a folder with its text second pass (``nlu/``, written by ``attach``) in
    ``model.nlu`` when the folder has one.

    runtime: ``eager`` = ``SLUModel.from_pretrained(path_or_id, device=device, **kwargs)`` (a checkpoint that
    is not an SLU folder — None / "tiny.en" / "base", a converted folder, a hub id — gets the domain
    grammar's output vocabulary unless ``output_vocab`` says otherwise, and no text pass); ``onnx`` /
    ``onnx-int8`` = the ``assistant export`` folder on onnxruntime (``threads``: its intra-op threads).
    Without the text pass, load with ``SLUModel.from_pretrained`` / ``OnnxSLU``."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime {runtime!r}: choose one of {RUNTIMES}")
    if runtime != "eager":
        model = OnnxSLU(path_or_id, precision="int8" if runtime == "onnx-int8" else "fp32", threads=threads)
    else:
        kwargs.setdefault("default_vocab", domain_vocab_texts)
        model = SLUModel.from_pretrained(path_or_id, device=device, **kwargs)
        if path_or_id is None or is_packaged_name(path_or_id):
            return model
    folder = Path(path_or_id)
    if (runtime != "eager" or (folder / SLU_CONFIG_FILE).is_file()) and (folder / NLU_DIR).is_dir():
        model.nlu = NluPass.load(folder / NLU_DIR)
        model.nlu.teacher.to(model.device)
    return model
