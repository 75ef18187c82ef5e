"""The text side: a MiniLM text NLU model and the second pass that lets it correct the speech model.

* ``assistant.nlu.spans``: slot values <-> word spans (BIO tags);
* ``assistant.nlu.model``: the network (``TextTeacher``: scoring, prediction, save / load);
* ``assistant.nlu.training``: its training (``train_teacher``) and the default teacher (``default_teacher``:
  the grammar's text minus the corpus's held-out phrasings, trained once and cached; ``field_teacher``: that
  text plus the field pool's transcripts with the frames RSFT kept);
* ``assistant.nlu.second_pass``: the deployed second pass (``NluPass``, ``choose_weight``, ``attach``);
* ``assistant.nlu.pipeline``: ``load_pipeline``, the speech model with its saved second pass;
* ``assistant.nlu.selection``: which text-pass setting ships (the configured one unless dev clearly prefers another).

Layers: this package uses ``assistant.model`` and ``assistant.data``; ``assistant.model`` never imports
it (``SLUModel.nlu`` is a plain slot that ``load_pipeline`` fills).
"""

from assistant.nlu.model import TeacherError, TextTeacher
from assistant.nlu.pipeline import load_pipeline
from assistant.nlu.second_pass import (STOCK_BONUSES, NluError, NluPass, Readings, attach, choose_weight,
                                       dev_readings, stock_transcripts)
from assistant.nlu.training import default_teacher, train_teacher

__all__ = ["STOCK_BONUSES", "NluError", "NluPass", "Readings", "TeacherError", "TextTeacher", "attach",
           "choose_weight", "default_teacher", "dev_readings", "load_pipeline", "stock_transcripts",
           "train_teacher"]
