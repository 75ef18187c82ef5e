"""RSFT step 1 — generate: N sampled candidate frames (+ the greedy one) per utterance.

The encoder runs once per utterance (candidates share its states); each candidate carries its
sequence log-prob under the current model and under the frozen reference model. Candidates are
appended to a JSONL file batch by batch, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import json
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from assistant.audio import AudioError, load_audio
from assistant.rsft.types import Candidate


@dataclass
class SamplingParams:
    num_samples: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 96
    greedy: bool = True


def _candidates_for_batch(model, ref_model, utt_ids, waves, params: SamplingParams, seed: int) -> list[list[Candidate]]:
    mels = model.features(waves)
    with torch.no_grad():
        enc = model.encode(mels)
        outs = model.generate(enc, num_samples=params.num_samples, greedy=params.greedy,
                              temperature=params.temperature, top_p=params.top_p, top_k=params.top_k,
                              max_new_tokens=params.max_new_tokens, seed=seed)
        ref_lp: list[float] = []
        if ref_model is not None:
            flat = [c.token_ids for cs in outs for c in cs]
            rows = [i for i, cs in enumerate(outs) for _ in cs]
            ref_enc = ref_model.encode(mels) if ref_model is not model else enc
            ref_lp = ref_model.sequence_logprobs(ref_enc, flat, expand=rows).tolist() if flat else []
    result, k = [], 0
    for uid, cs in zip(utt_ids, outs):
        group = []
        for i, c in enumerate(cs):
            # A candidate cut off at max_new_tokens has no end token: its reference score would not be
            # comparable (sequence_logprobs always scores <|endoftext|>), so it gets none.
            ref = float(ref_lp[k]) if ref_lp and getattr(c, "finished", True) else None
            k += 1
            group.append(Candidate(utt_id=uid, index=i, text=c.text, token_ids=list(c.token_ids),
                                   logprob=float(c.logprob), ref_logprob=ref, greedy=bool(c.greedy),
                                   finished=bool(getattr(c, "finished", True))))
        result.append(group)
    return result


def read_done(path: Path) -> dict[str, list[Candidate]]:
    """Candidates already on disk (a partial last line from a kill is ignored)."""
    done: dict[str, list[Candidate]] = {}
    if not path.is_file():
        return done
    for line in path.read_text().splitlines():
        try:
            c = Candidate.from_dict(json.loads(line))
        except (json.JSONDecodeError, ValueError, TypeError):
            continue
        done.setdefault(c.utt_id, []).append(c)
    return done


def generate_candidates(model, utterances, out_path: Path, params: SamplingParams, ref_model=None,
                        batch_size: int = 16, seed: int = 0, desc: str = "generate") -> list[list[Candidate]]:
    """Candidates for every utterance, in utterance order; resumes from `out_path`.

    A batch's candidates are written with one append + flush after the batch: a kill loses at most the
    batch in flight. Unreadable audio is reported and gets no candidates.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    done = read_done(out_path)
    todo = [u for u in utterances if u.id not in done]
    # Truncate a torn last line left by a kill so appends start on a fresh line.
    if out_path.is_file():
        text = out_path.read_text()
        if text and not text.endswith("\n"):
            out_path.write_text(text[: text.rfind("\n") + 1])
    bar = tqdm(total=len(utterances), initial=len(utterances) - len(todo), desc=desc, unit="utt", disable=None)
    with out_path.open("a") as f:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            ids, waves = [], []
            for u in batch:
                try:
                    waves.append(load_audio(u.audio, max_seconds=model.context_seconds))
                    ids.append(u.id)
                except AudioError as e:
                    print(f"skipped: {e}", file=sys.stderr)
            if ids:
                # Seed from the batch's ids: the same batch draws the same samples after a resume.
                batch_seed = zlib.crc32(f"{seed}:{','.join(ids)}".encode())
                for group in _candidates_for_batch(model, ref_model, ids, waves, params, batch_seed):
                    done[group[0].utt_id if group else ""] = group
                    for c in group:
                        f.write(json.dumps(c.to_dict(), ensure_ascii=False) + "\n")
                f.flush()
            bar.update(len(batch))
    bar.close()
    return [done.get(u.id, []) for u in utterances]
