"""The deployed pipeline: the speech model with its text second pass, loaded from one model folder."""

from __future__ import annotations

from pathlib import Path

import torch

from assistant.data.grammar import domain_vocab_texts
from assistant.model.io import SLU_CONFIG_FILE
from assistant.model.packaged import is_packaged_name
from assistant.model.slu import SLUModel
from assistant.nlu.second_pass import NLU_DIR, NluPass


def load_pipeline(path_or_id: str | Path | None = None, device: str | torch.device = "cpu", **kwargs) -> SLUModel:
    """``SLUModel.from_pretrained(path_or_id, device=device, **kwargs)`` with the folder's text second pass
    (``nlu/``, written by ``attach``) in ``model.nlu`` when it has one, on ``device`` too.

    A checkpoint that is not an SLU folder (None / "tiny.en" / "base", a converted folder, a hub id) gets
    the domain grammar's output vocabulary (``assistant.data.grammar.domain_vocab_texts``) unless
    ``output_vocab`` says otherwise, and no text pass. Without the text pass, load with
    ``SLUModel.from_pretrained``."""
    kwargs.setdefault("default_vocab", domain_vocab_texts)
    model = SLUModel.from_pretrained(path_or_id, device=device, **kwargs)
    if path_or_id is None or is_packaged_name(path_or_id):
        return model
    folder = Path(path_or_id)
    if (folder / SLU_CONFIG_FILE).is_file() and (folder / NLU_DIR).is_dir():
        model.nlu = NluPass.load(folder / NLU_DIR)
        model.nlu.teacher.to(device)
    return model
