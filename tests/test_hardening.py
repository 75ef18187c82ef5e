"""Hostile inputs through every entry point: each gets one clear error naming the file, batch runs go
on with the rest, and nothing already produced is lost. Plus: no pickles anywhere (safetensors only).

Entry points: `assistant transcribe-and-classify`, `assistant evaluate`, the demo's HTTP API,
`assistant train` (configs, manifests, audio) and `assistant rsft` (configs, manifests).
"""

import json
import re
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from assistant.cli import main

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
FSC = FIXTURES / "fsc" / "data" / "train_data.csv"
SLURP = FIXTURES / "slurp" / "train.jsonl"
CLIP = FIXTURES / "fsc" / "wavs" / "speakers" / "piperJoeMedium01" / "bring_me_some_juice.wav"

# name -> None (usable audio) or a fragment the error must contain. The model hears at most 6 s.
HOSTILE = {
    "clean.wav": None,
    "loud.wav": None,          # float WAV peaking at 8.0: accepted, peak-normalised
    "8k.wav": None,            # resampled to 16 kHz
    "stereo.flac": None,       # mixed to mono
    "empty.wav": "empty",
    "corrupt.wav": "corrupt",
    "truncated.wav": "truncated",
    "nan.wav": "NaN",
    "long.wav": "too long",
    "silent.wav": "silent",
    "notes.wav": "not audio",
    "video.webm": "WebM",
    "photo.wav": "unrecognised audio format",
}
BAD = sorted(k for k, v in HOSTILE.items() if v)
GOOD = sorted(k for k, v in HOSTILE.items() if not v)


def make_hostile_files(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    audio, sr = sf.read(str(CLIP), dtype="float32")

    def write(name, data, rate=sr, **kw):
        sf.write(str(folder / name), data, rate, **kw)

    shutil.copy(CLIP, folder / "clean.wav")
    write("loud.wav", audio * 8, subtype="FLOAT")
    write("8k.wav", AF.resample(torch.from_numpy(audio), sr, 8000).numpy(), 8000)
    write("stereo.flac", np.stack([audio, 0.5 * audio], 1))
    (folder / "empty.wav").write_bytes(b"")
    (folder / "corrupt.wav").write_bytes(b"RIFF\x24\x08\x00\x00WAVEfmt " + bytes(range(256)) * 4)
    raw = CLIP.read_bytes()
    (folder / "truncated.wav").write_bytes(raw[: len(raw) // 2])
    nan = audio.copy()
    nan[100:200] = np.nan
    write("nan.wav", nan, subtype="FLOAT")
    write("long.wav", np.tile(audio, int(40 * sr / len(audio)) + 1))
    write("silent.wav", np.zeros(sr, np.float32))
    (folder / "notes.wav").write_text("milk, eggs, bread\n")
    (folder / "video.webm").write_bytes(b"\x1aE\xdf\xa3" + bytes(200))
    (folder / "photo.wav").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(300))
    assert sorted(p.name for p in folder.iterdir()) == sorted(HOSTILE)
    return folder


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    return make_hostile_files(tmp_path_factory.mktemp("hostile"))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from assistant.data.manifest import read_manifest
    from assistant.model.slu import SLUModel
    from assistant.train import frame_target

    folder = tmp_path_factory.mktemp("model")
    texts = [frame_target(u) for u in read_manifest(FSC) + read_manifest(SLURP)]
    SLUModel.tiny_random(texts, seed=0).save_pretrained(folder)
    return folder


def _json_lines(text: str) -> list[dict]:
    return [json.loads(l) for l in text.strip().splitlines() if l.startswith("{")]


# ------------------------------------------------------------------------- transcribe-and-classify

def test_transcribe_folder_reports_every_bad_file_and_decodes_the_rest(tiny_model, hostile, capsys):
    code = main(["transcribe-and-classify", str(hostile), "--model", str(tiny_model), "--json", "--batch-size", "4"])
    rows = {Path(r["path"]).name: r for r in _json_lines(capsys.readouterr().out)}
    assert code == 1                                   # some files failed ...
    assert sorted(rows) == sorted(HOSTILE)             # ... and every file got its line
    for name in GOOD:
        assert not rows[name]["error"] and rows[name]["latency_s"] > 0 and rows[name]["raw"], name
    for name in BAD:
        err = rows[name]["error"]
        assert name in err and HOSTILE[name] in err and "Fix:" in err, (name, err)


def test_transcribe_text_output_names_missing_and_bad_files(tiny_model, hostile, tmp_path, capsys):
    missing = tmp_path / "never-recorded.wav"
    code = main(["transcribe-and-classify", str(hostile / "nan.wav"), str(missing), str(hostile / "clean.wav"),
                 "--model", str(tiny_model)])
    out = capsys.readouterr().out
    assert code == 1
    assert "nan.wav" in out and "NaN" in out
    assert "never-recorded.wav" in out and "not found" in out
    assert out.count("latency") == 1                   # clean.wav was still decoded


def test_transcribe_an_empty_folder_is_an_error_not_silence(tiny_model, tmp_path, capsys):
    (tmp_path / "empty-folder").mkdir()
    code = main(["transcribe-and-classify", str(tmp_path / "empty-folder"), "--model", str(tiny_model)])
    assert code != 0
    assert "empty-folder" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- evaluate

def _manifest_with_hostile_rows(path: Path, hostile: Path) -> dict:
    """Good clips, broken clips, a missing file and malformed lines in one JSONL manifest."""
    rows = [{"audio": str(hostile / n), "text": "bring me some juice", "intent": "bring_juice_none",
             "slots": {"object": "juice"}, "speaker": "s1", "id": n} for n in sorted(HOSTILE)]
    rows.append({"audio": "does/not/exist.wav", "text": "lights on", "intent": "activate_lights_none",
                 "slots": {}, "speaker": "s2", "id": "missing"})
    lines = [json.dumps(r) for r in rows]
    bad_lines = {
        len(lines) + 1: '{"audio": "clean.wav", "text": "no intent here"}',           # missing field
        len(lines) + 2: '{"audio": "clean.wav", "text": "x", "intent": "y", "slots": "oops"}',
        len(lines) + 3: '{"audio": "clean.wav", "text": truncated',                    # not JSON
        len(lines) + 4: '["a", "list"]',
    }
    lines += bad_lines.values()
    path.write_text("\n".join(lines) + "\n")
    return {"unreadable": BAD + ["missing"], "readable": GOOD, "bad_lines": sorted(bad_lines)}


def test_evaluate_scores_readable_clips_and_lists_the_rest(tiny_model, hostile, tmp_path, capsys, caplog):
    manifest = tmp_path / "hostile.jsonl"
    expect = _manifest_with_hostile_rows(manifest, hostile)
    out = tmp_path / "eval"
    code = main(["evaluate", "--model", str(tiny_model), "--manifest", str(manifest), "--json", "--out", str(out),
                 "--batch-size", "3"])
    captured = capsys.readouterr()
    assert code == 0
    report = json.loads(captured.out.strip().splitlines()[-1])
    assert report["n"] == len(expect["readable"])
    assert report["n_unreadable"] == len(expect["unreadable"])
    for name in BAD:                                   # every broken clip is named on stderr
        assert f"{name}: " in captured.err, name
    assert "exist.wav" in captured.err and "not found" in captured.err
    for line in expect["bad_lines"]:                   # malformed rows are skipped with file:line
        assert f"{manifest}:{line}:" in caplog.text, line
    preds = [json.loads(l) for l in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(p["id"] for p in preds) == sorted(expect["readable"] + expect["unreadable"])
    assert all(bool(p["error"]) == (p["id"] in expect["unreadable"]) for p in preds)
    assert json.loads((out / "report.json").read_text())["n"] == report["n"]


@pytest.mark.parametrize("content, fragment", [
    (",path,speakerId,transcription\n0,a.wav,s,hello\n", "lacks column"),    # FSC CSV without labels
    ("\x00\x01binary", "binary"),
    ('{"audio": "x.wav", "text": "no intent"}\n', "no usable rows"),
    ("", "empty manifest"),
])
def test_evaluate_unusable_manifest_is_one_error_naming_it(tiny_model, tmp_path, capsys, content, fragment):
    manifest = tmp_path / ("broken.csv" if content.startswith(",") else "broken.jsonl")
    manifest.write_text(content)
    assert main(["evaluate", "--model", str(tiny_model), "--manifest", str(manifest)]) == 2
    err = capsys.readouterr().err
    assert str(manifest) in err and fragment in err


def test_evaluate_missing_model_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["evaluate", "--model", str(tmp_path / "no-model"), "--manifest", str(FSC)]) == 2
    assert "no-model" in capsys.readouterr().err


# -------------------------------------------------------------------------------------- demo API

@pytest.fixture(scope="module")
def demo_url(tiny_model):
    from assistant.demo import Classifier, make_server

    srv = make_server(Classifier.from_dir(tiny_model), "127.0.0.1", 0, verbose=False)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.url
    srv.shutdown()
    srv.server_close()


def _post(url: str, data: bytes, name: str) -> tuple[int, dict]:
    req = urllib.request.Request(url + "api/classify", data=data, method="POST", headers={"X-Filename": name})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_demo_api_hostile_uploads(demo_url, hostile, name):
    status, body = _post(demo_url, (hostile / name).read_bytes(), name)
    if HOSTILE[name] is None:
        assert status == 200 and body["path"] == name and body["latency_s"] > 0 and not body["error"]
    else:
        assert status == 400
        assert body["error"].startswith(f"{name}: ") and HOSTILE[name] in body["error"]
        assert "manifest" not in body["error"]          # fixes fit a web page, not a corpus
        assert "assistant-demo-" not in body["error"]   # the temp folder does not leak


def test_demo_api_survives_a_body_shorter_than_announced(demo_url):
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(demo_url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.putrequest("POST", "/api/classify")
    conn.putheader("Content-Length", "5000")
    conn.endheaders()
    conn.send(b"RIFF" + bytes(100))
    conn.sock.shutdown(1)                  # the client gives up half way
    resp = conn.getresponse()
    assert resp.status == 400 and b"cut off" in resp.read()
    conn.close()
    assert _post(demo_url, CLIP.read_bytes(), "after.wav")[0] == 200


# ------------------------------------------------------------------------------- train / rsft configs

@pytest.mark.parametrize("yaml_text, key", [
    ("lr: fast\n", "lr"),
    ("epochs: 2.5\n", "epochs"),
    ("batch_size: 0\n", "batch_size"),
    ("context_seconds: 100\n", "context_seconds"),
    ("tiny_random: maybe\n", "tiny_random"),
    ("lr: .nan\n", "lr"),
    ("save_every_steps: 0\n", "save_every_steps"),
    ("dev_limit: -5\n", "dev_limit"),
    ("threads: -2\n", "threads"),
    ("bogus_key: 1\n", "unknown key"),
    ("lr: [oops\n", "not valid YAML"),
    ("- a\n- b\n", "mapping"),
])
def test_train_bad_yaml_values_name_the_file_and_key(tmp_path, capsys, yaml_text, key):
    cfg = tmp_path / "my-train.yaml"
    cfg.write_text(yaml_text)
    # Should the value slip through, the run stops at once on a missing manifest, inside tmp_path.
    safety = ["--output-dir", str(tmp_path / "out"), "--train-manifest", str(tmp_path / "none.jsonl")]
    assert main(["train", "--config", str(cfg), *safety]) == 2
    err = capsys.readouterr().err
    assert "my-train.yaml" in err and key in err, err


def test_train_missing_config_file(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "absent.yaml"), "--output-dir", str(tmp_path / "out")]) == 2
    assert "absent.yaml" in capsys.readouterr().err


@pytest.mark.parametrize("yaml_text, key", [
    ("rule: nonsense\n", "rule"),
    ("beta: 0\n", "beta"),
    ("rewards: verifier\n", "rewards"),
    ("rewards: {verifier: lots}\n", "rewards"),
    ("rounds: -1\n", "rounds"),
])
def test_rsft_bad_yaml_values_name_the_file_and_key(tmp_path, capsys, yaml_text, key):
    cfg = tmp_path / "my-rsft.yaml"
    cfg.write_text(yaml_text)
    assert main(["rsft", "--config", str(cfg), "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "my-rsft.yaml" in err and key in err, err


def test_rsft_missing_manifest_is_one_clear_error(tiny_model, tmp_path, capsys):
    code = main(["rsft", "--init-model", str(tiny_model), "--pool-manifest", str(tmp_path / "pool.jsonl"),
                 "--dev-manifest", str(FSC), "--output-dir", str(tmp_path / "out"), "--rewards", "{verifier: 1.0}"])
    assert code == 2
    assert "pool.jsonl" in capsys.readouterr().err


def test_train_missing_manifest_is_one_clear_error(tmp_path, capsys):
    code = main(["train", "--tiny-random", "true", "--train-manifest", str(tmp_path / "train.jsonl"),
                 "--dev-manifest", str(FSC), "--output-dir", str(tmp_path / "out")])
    assert code == 2
    assert "train.jsonl" in capsys.readouterr().err


def test_train_with_only_broken_audio_names_the_files(hostile, tmp_path, capsys):
    manifest = tmp_path / "broken.jsonl"
    manifest.write_text("".join(json.dumps({"audio": str(hostile / n), "text": "bring me some juice",
                                            "intent": "bring_juice_none", "slots": {"object": "juice"}}) + "\n"
                                for n in ("nan.wav", "notes.wav")))
    code = main(["train", "--tiny-random", "true", "--train-manifest", str(manifest), "--dev-manifest", str(FSC),
                 "--output-dir", str(tmp_path / "out"), "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "nan.wav" in err and "notes.wav" in err and "no readable training audio" in err


def test_train_skips_broken_clips_and_saves_safetensors_only(hostile, tmp_path, capsys):
    """One corrupt and one missing clip among good ones: training goes on, names them, saves no pickles."""
    from assistant.data.manifest import read_manifest

    good = read_manifest(FSC)[:2]
    rows = [u.to_json() for u in good] + [
        {"audio": str(hostile / "corrupt.wav"), "text": "bring me some juice", "intent": "bring_juice_none",
         "slots": {"object": "juice"}},
        {"audio": str(tmp_path / "gone.wav"), "text": "bring me some juice", "intent": "bring_juice_none",
         "slots": {"object": "juice"}}]
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    code = main(["train", "--tiny-random", "true", "--train-manifest", str(manifest), "--dev-manifest", str(FSC),
                 "--output-dir", str(out), "--max-steps", "2", "--batch-size", "2", "--dev-limit", "2",
                 "--save-every-steps", "1", "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 0
    assert "corrupt.wav" in err and "gone.wav" in err
    assert json.loads((out / "last" / "trainer_state.json").read_text())["step"] == 2
    assert_no_pickles(out)
    for folder in (out / "best", out / "last"):
        assert (folder / "model.safetensors").is_file()
    assert (out / "last" / "optimizer.safetensors").is_file()


# ------------------------------------------------------------------------------------- no pickles

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz"}


def assert_no_pickles(folder: Path) -> None:
    """Every tensor file under `folder` is safetensors; nothing that unpickles on load."""
    from safetensors import safe_open

    found = [p for p in folder.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES]
    assert not found, f"pickle-format files written: {found}"
    tensors = list(folder.rglob("*.safetensors"))
    assert tensors, f"no safetensors under {folder}"
    for p in tensors:
        with safe_open(str(p), "pt") as f:
            assert list(f.keys()) or p.name == "optimizer.safetensors"


def _call_text(code: str, open_paren: int) -> str:
    """The source of a call from its '(' to the matching ')'."""
    depth = 0
    for i in range(open_paren, len(code)):
        depth += {"(": 1, ")": -1}.get(code[i], 0)
        if depth == 0:
            return code[open_paren: i + 1]
    return code[open_paren:]


def test_package_never_unpickles():
    """torch.load only with weights_only=True; no pickle/joblib/torch.save/np.load(allow_pickle) at all."""
    forbidden = [r"\bimport pickle\b", r"\bpickle\.(load|loads|dump|dumps)\(", r"\bjoblib\b", r"\bdill\b",
                 r"\btorch\.save\(", r"allow_pickle\s*=\s*True", r"\.to_pickle\(", r"read_pickle\("]
    problems = []
    sources = sorted((ROOT / "assistant").rglob("*.py"))
    assert len(sources) > 10
    for path in sources:
        code = "\n".join(l.split("#", 1)[0] for l in path.read_text().splitlines())   # comments may say "pickle"
        for pattern in forbidden:
            for m in re.finditer(pattern, code):
                problems.append(f"{path.relative_to(ROOT)}: {m.group(0)}")
        for m in re.finditer(r"torch\.load\(", code):
            call = _call_text(code, m.end() - 1)
            if "weights_only=True" not in call.replace(" ", ""):
                problems.append(f"{path.relative_to(ROOT)}: {call} without weights_only=True")
    assert not problems, problems
