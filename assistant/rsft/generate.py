"""RSFT step 1 — generate: N sampled candidate frames (+ the greedy one, + readings) per utterance.

The encoder runs once per utterance (candidates share its states); each candidate carries its
sequence log-prob under the current model and under the frozen reference model. Candidates are
appended to a JSONL file batch by batch, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import json
import sys
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from assistant.audio import AudioError, load_audio
from assistant.model.interface import SpeechModel
from assistant.rsft.types import Candidate

if TYPE_CHECKING:
    from assistant.model.slu import SLUModel


@dataclass
class GenerateConfig:
    """RSFT's ``generate:`` section: what is drawn for each utterance, and in what batches."""
    num_samples: int = 8                 # draws from the policy; 0 = the greedy candidate only (pseudo-labelling)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None             # None: no top-k cut
    max_new_tokens: int = 96
    greedy: bool = True                  # + the greedy candidate (not a draw: count 0)
    batch_size: int = 16                 # utterances per batch (the unit of resuming and of sharing out)
    # readings that join the samples as candidates (not draws; assistant.rsft.readings): "text" = the text
    # model's frame for each decoded transcript, "stock" = its frame for stock Whisper's transcript
    readings: list[str] = field(default_factory=list)

    def validate(self) -> None:
        from assistant.rsft.readings import READING_SOURCES

        if self.num_samples < 0:
            raise ValueError("generate.num_samples must be >= 0 (0 = greedy only: argmax pseudo-labelling)")
        if self.num_samples and (self.temperature <= 0 or not 0 < self.top_p <= 1 or (self.top_k or 0) < 0):
            raise ValueError("generate: temperature must be > 0, 0 < top_p <= 1, top_k >= 1 or None")
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("generate: batch_size and max_new_tokens must be >= 1")
        unknown = sorted(set(self.readings) - set(READING_SOURCES))
        if unknown:
            raise ValueError(f"generate.readings {unknown} unknown; choose from {list(READING_SOURCES)}")


def same_encoder(model: SLUModel, ref_model: SLUModel | None) -> bool:
    """True when both models' encoders hold identical weights (RSFT with a frozen encoder): the reference
    can then reuse the current model's encoder states instead of running its own encoder (~17% of a
    round's generation time)."""
    if ref_model is None or ref_model is model:
        return True
    a, b = model.encoder_state(), ref_model.encoder_state()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a) and \
        model.context_seconds == ref_model.context_seconds


def candidates_for_batch(model: SpeechModel, ref_model: SLUModel | None, utt_ids, waves, params: GenerateConfig,
                         seed: int, share_encoder: bool = False, reader=None) -> list[list[Candidate]]:
    """One batch of decoded audio -> each utterance's candidates (draws, greedy, readings), with log-probs
    under ``model`` and ``ref_model``; nothing is written (``generate_candidates`` persists and resumes)."""
    mels = model.features(waves)
    with torch.no_grad():
        enc = model.encode(mels)
        groups = model.generate(enc, num_samples=params.num_samples, greedy=params.greedy,
                                temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or 0,
                                max_new_tokens=params.max_new_tokens, seed=seed)
        if reader is not None:
            groups = with_readings(model, enc, groups, reader(model, waves, groups, utt_ids))
        ref_lp: list[float] = []
        if ref_model is not None:
            flat = [c.token_ids for cs in groups for c in cs]
            expand = [i for i, cs in enumerate(groups) for _ in cs]
            ref_enc = enc if ref_model is model or share_encoder else ref_model.encode(mels)
            ref_lp = ref_model.sequence_logprobs(ref_enc, flat, expand=expand).tolist() if flat else []
    result, k = [], 0
    for uid, cs in zip(utt_ids, groups):
        group = []
        for i, c in enumerate(cs):
            # A candidate cut off at max_new_tokens has no end token: its reference score would not be
            # comparable (sequence_logprobs always scores <|endoftext|>), so it gets none.
            ref = float(ref_lp[k]) if ref_lp and c.finished else None
            k += 1
            group.append(replace(c, utt_id=uid, index=i, ref_logprob=ref))
        result.append(group)
    return result


def with_readings(model: SpeechModel, enc, groups: list[list[Candidate]],
                  extra: list[list[tuple[str, str]]]) -> list[list[Candidate]]:
    """Each utterance's decoded candidates + its readings (``extra``: (frame line, source) per utterance),
    scored by the speech model; a reading it cannot spell is no candidate."""
    groups = [list(cs) for cs in groups]
    lines = [line for es in extra for line, _ in es]
    where = [i for i, es in enumerate(extra) for _ in es]
    if lines:
        lps = model.sequence_logprobs(enc, lines, expand=where).tolist()
        for i, (line, source), tokens, lp in zip(where, [e for es in extra for e in es], model.tokenize(lines), lps):
            if lp > float("-inf"):
                groups[i].append(Candidate(text=line, token_ids=tokens, logprob=float(lp), greedy=False,
                                           finished=True, count=0, source=source))
    return groups


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


def progress_path(out_path: Path) -> Path:
    """The commit log next to a candidates file: one line per finished batch (its ids, the file size)."""
    return out_path.with_name(out_path.name + ".progress")


def _read_progress(path: Path) -> tuple[set[str], int] | None:
    """(ids of finished batches, candidates-file size after the last one); None if there is no log."""
    if not path.is_file():
        return None
    ids, size = set(), 0
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
            batch_ids, end = [str(i) for i in rec["ids"]], int(rec["bytes"])
        except (ValueError, KeyError, TypeError):
            continue                        # a torn last line from a kill: that batch is not finished
        ids.update(batch_ids)
        size = max(size, end)
    return ids, size


def _resume_point(out_path: Path, log_path: Path) -> set[str]:
    """Cut the candidates file back to its last finished batch; return the ids already done.

    Python flushes its write buffer whenever it fills, so a kill can leave part of a batch on disk (some
    utterances, even some of one utterance's candidates). Only batches recorded in the commit log count.
    """
    progress = _read_progress(log_path)
    size = out_path.stat().st_size if out_path.is_file() else 0
    if progress is None:
        if size:                            # written before the commit log existed: trust whole lines
            text = out_path.read_text()
            out_path.write_text(text[: text.rfind("\n") + 1])
            return set(read_done(out_path))
        return set()
    ids, committed = progress
    if size < committed:                    # the file was cut or replaced behind our back: start over
        out_path.unlink(missing_ok=True)
        log_path.unlink()
        return set()
    if size > committed:
        with out_path.open("r+b") as f:
            f.truncate(committed)
    return ids


def generate_candidates(model, utterances, out_path: Path, params: GenerateConfig, ref_model=None,
                        seed: int = 0, desc: str = "generate", reader=None) -> list[list[Candidate]]:
    """Candidates for every utterance, in utterance order; resumes from `out_path`.

    Batches are fixed slices of `utterances` (not of what is left to do), so after a resume every batch
    has the members, and hence the seed, it has in an uninterrupted run. A batch counts as done once its
    candidates are appended and its line is in the commit log (`progress_path`); a kill loses at most
    the batch in flight, and never leaves half of one behind. Unreadable audio is reported and gets no
    candidates. ``reader`` (assistant.rsft.readings.Reader): readings of each utterance join its
    candidates after the decoded ones.

    Under ``accelerate launch`` (P processes) each process takes every P-th batch into a file of its
    own (``<out>.rank<r>``, resumable the same way); the main process then merges them, in utterance
    order, into `out_path`, which is byte for byte the file one process writes.
    """
    from assistant import distributed as dist

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    batch_size = params.batch_size
    starts = list(range(0, len(utterances), batch_size))
    if dist.world_size() == 1:
        finished = _resume_point(out_path, progress_path(out_path))
        _generate_into(model, utterances, out_path, params, ref_model, batch_size, seed, desc, reader, starts,
                       finished)
    else:
        done_before = set(_committed_groups(out_path)[1]) if out_path.is_file() else set()
        part = out_path.with_name(f"{out_path.name}.rank{dist.rank()}")
        finished = _resume_point(part, progress_path(part)) | done_before
        mine = dist.batch_starts(len(utterances), batch_size)
        tag = f"{desc} [process {dist.rank() + 1}/{dist.world_size()}]"
        _generate_into(model, utterances, part, params, ref_model, batch_size, seed, tag, reader, mine, finished)
        print(f"{tag}: {len(mine)} of {len(starts)} batches are this process's share", file=sys.stderr)
        dist.barrier()
        if dist.is_main():
            merge_parts(utterances, out_path, batch_size)
        dist.barrier()
    done = read_done(out_path)
    return [done.get(u.id, []) for u in utterances]


def _generate_into(model, utterances, out_path: Path, params: GenerateConfig, ref_model, batch_size: int,
                   seed: int, desc: str, reader, starts: list[int], finished: set[str]) -> None:
    """Append the candidates of the batches beginning at ``starts`` (less the ``finished`` ids) to out_path."""
    log_path = progress_path(out_path)
    share_encoder = same_encoder(model, ref_model)
    mine = [u for s in starts for u in utterances[s:s + batch_size]]
    bar = tqdm(total=len(mine), initial=sum(u.id in finished for u in mine), desc=desc, unit="utt", disable=None)
    with out_path.open("ab") as f, log_path.open("a") as log:
        for start in starts:
            batch = [u for u in utterances[start:start + batch_size] if u.id not in finished]
            if not batch:
                continue
            ids, waves = [], []
            for u in batch:
                try:
                    waves.append(load_audio(u.audio, max_seconds=model.context_seconds))
                    ids.append(u.id)
                except AudioError as e:
                    print(f"skipped: {e}", file=sys.stderr)
            lines = []
            if ids:
                # Seed from the batch's ids: the same batch draws the same samples after a resume.
                batch_seed = zlib.crc32(f"{seed}:{','.join(ids)}".encode())
                for group in candidates_for_batch(model, ref_model, ids, waves, params, batch_seed,
                                                   share_encoder, reader):
                    lines += [json.dumps(c.to_dict(), ensure_ascii=False) + "\n" for c in group]
            f.write("".join(lines).encode("utf-8"))
            f.flush()
            log.write(json.dumps({"ids": [u.id for u in batch], "bytes": f.tell()}) + "\n")
            log.flush()
            finished.update(u.id for u in batch)
            bar.update(len(batch))
    bar.close()


def candidates_on_disk(path: Path) -> int:
    """How many candidates a resumed run will take from `path` rather than draw (the committed batches;
    a file from before the commit log: its whole lines)."""
    if _read_progress(progress_path(path)) is None:
        return sum(len(c) for c in read_done(path).values())
    return sum(len(lines) for lines in _committed_groups(path)[0].values())


def _committed_groups(path: Path) -> tuple[dict[str, list[str]], set[str]]:
    """({utt_id: its candidate lines}, ids of finished batches) from the committed part of a candidates
    file (what its commit log vouches for; nothing past it)."""
    progress = _read_progress(progress_path(path))
    if progress is None or not path.is_file():
        return {}, set()
    ids, size = progress
    with path.open("rb") as f:
        data = f.read(size).decode("utf-8")
    groups: dict[str, list[str]] = {}
    for line in data.splitlines(keepends=True):
        uid = json.loads(line)["utt_id"]
        if uid in ids:
            groups.setdefault(uid, []).append(line)
    return groups, ids


def merge_parts(utterances, out_path: Path, batch_size: int) -> None:
    """The processes' files (and whatever out_path already held) -> out_path in utterance order, with a
    commit log of one line per batch: the file and log one process would have written. Parts are
    removed once the merge is in place."""
    parts = sorted(out_path.parent.glob(out_path.name + ".rank*"))
    parts = [p for p in parts if not p.name.endswith(".progress")]
    groups, finished = _committed_groups(out_path)
    for p in parts:
        g, ids = _committed_groups(p)
        groups.update(g)
        finished |= ids
    tmp, tmp_log = out_path.with_name(out_path.name + ".merge"), out_path.with_name(out_path.name + ".merge.log")
    with tmp.open("wb") as f, tmp_log.open("w") as log:
        for start in range(0, len(utterances), batch_size):
            batch = utterances[start:start + batch_size]
            missing = [u.id for u in batch if u.id not in finished]
            if missing:
                raise RuntimeError(f"merging {out_path}: no process finished {missing[:3]}; re-run to resume")
            f.write("".join(line for u in batch for line in groups.get(u.id, [])).encode("utf-8"))
            log.write(json.dumps({"ids": [u.id for u in batch], "bytes": f.tell()}) + "\n")
    tmp.replace(out_path)                      # data first: its log, once in place, only ever vouches for it
    tmp_log.replace(progress_path(out_path))
    for p in parts:
        p.unlink()
        progress_path(p).unlink(missing_ok=True)
