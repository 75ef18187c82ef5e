"""`assistant demo`: the JSON API and the page, driven end to end by headless Chromium.

The model is a tiny random Whisper trained for a few seconds until it says one fixture clip's frame,
so every result below is known in advance (it ignores the audio: it has learnt one answer).
"""

import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from assistant.cli import main

FIXTURES = Path(__file__).parent / "fixtures"
FSC = FIXTURES / "fsc" / "data" / "train_data.csv"
CLIP = FIXTURES / "fsc" / "wavs" / "speakers" / "piperJoeMedium01" / "turn_on_the_lights_in_the_kitchen.wav"
KNOWN_INTENT = "activate_lights_kitchen"
KNOWN_SLOTS = {"location": "kitchen", "object": "lights"}
KNOWN_TRANSCRIPT = "turn on the lights in the kitchen"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def train_known_model(out: Path) -> Path:
    """A tiny random model trained on the first FSC fixture row until greedy decoding says its frame."""
    from assistant.config import load_config
    from assistant.train import TrainConfig, recipe_main

    threads = torch.get_num_threads()
    cfg = load_config(TrainConfig, None, tiny_random=True, train_manifest=str(FSC), dev_manifest=str(FSC),
                      output_dir=str(out), train_limit=1, dev_limit=1, batch_size=1, max_steps=150, lr=5e-3,
                      warmup_steps=1, freeze_encoder_layers=None, cache_encoder=True, save_every_steps=1000,
                      eval_every_steps=150, threads=1, train_embeddings=True)
    try:
        recipe_main(cfg)
    finally:
        torch.set_num_threads(threads)
    return out / "last"


@pytest.fixture(scope="module")
def known_model(tmp_path_factory):
    from assistant.audio import load_audio
    from assistant.inference import predict_waves
    from assistant.model.slu import SLUModel

    folder = train_known_model(tmp_path_factory.mktemp("demo-model"))
    pred = predict_waves(SLUModel.from_pretrained(folder), [load_audio(CLIP)])[0]
    assert pred.valid and pred.intent == KNOWN_INTENT, f"the fixture model did not learn its clip: {pred.raw!r}"
    return folder


@pytest.fixture(scope="module")
def server(known_model):
    from assistant.demo import Classifier, make_server

    srv = make_server(Classifier.from_dir(known_model), "127.0.0.1", 0, verbose=False)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def post(url: str, data: bytes, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=data, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def classify(server, data: bytes, name: str) -> tuple[int, dict]:
    return post(server.url + "api/classify", data, {"X-Filename": name, "Content-Type": "application/octet-stream"})


# ------------------------------------------------------------------------------------------- API

def test_api_returns_the_prediction_for_raw_audio_bytes(server):
    status, pred = classify(server, CLIP.read_bytes(), CLIP.name)
    assert status == 200, pred
    assert pred["path"] == CLIP.name and pred["valid"] and not pred["error"]
    assert pred["intent"] == KNOWN_INTENT and pred["slots"] == KNOWN_SLOTS
    assert pred["transcript"] == KNOWN_TRANSCRIPT
    assert "kitchen" in pred["response"].lower()
    assert 0.5 < pred["confidence"] <= 1.0 and pred["latency_s"] > 0


def test_api_accepts_multipart_form_uploads(server):
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"audio\"; filename=\"{CLIP.name}\"\r\n"
            f"Content-Type: audio/wav\r\n\r\n").encode() + CLIP.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    status, pred = post(server.url + "api/classify", body,
                        {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 200, pred
    assert pred["path"] == CLIP.name and pred["intent"] == KNOWN_INTENT


def test_api_multipart_without_a_file_is_a_clear_400(server):
    body = b"--xx\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n--xx--\r\n"
    status, out = post(server.url + "api/classify", body, {"Content-Type": "multipart/form-data; boundary=xx"})
    assert status == 400 and "audio" in out["error"]


def test_api_rejects_bad_uploads_with_messages_naming_the_file(server):
    status, out = classify(server, b"just some notes, not a recording\n", "notes.wav")
    assert status == 400 and out["error"].startswith("notes.wav:") and "not audio" in out["error"]
    status, out = classify(server, b"", "nothing.wav")
    assert status == 400 and "nothing.wav" in out["error"] and "empty" in out["error"]


def test_api_rejects_uploads_over_the_size_limit(server):
    from assistant.demo import MAX_UPLOAD_BYTES

    status, out = classify(server, b"\0" * (MAX_UPLOAD_BYTES + 1), "huge.wav")
    assert status == 400 and "huge.wav" in out["error"] and "too large" in out["error"]
    status, _ = classify(server, CLIP.read_bytes(), CLIP.name)     # the server is still fine
    assert status == 200


def test_concurrent_requests_are_decoded_together_and_each_gets_its_own_answer(server, tmp_path):
    """16 clients at once: every one gets the prediction for the clip it sent (two different clips, so a
    mix-up would show), and the worker ran fewer batches than requests."""
    import soundfile as sf
    from concurrent.futures import ThreadPoolExecutor

    wave, sr = sf.read(CLIP, dtype="float32")
    other = tmp_path / "other.wav"
    sf.write(other, wave[: len(wave) // 3], sr)            # a different clip: a third of the command
    solo = classify(server, other.read_bytes(), "other.wav")[1]
    before = len(server.classifier.batcher.batch_sizes)
    jobs = [(CLIP.read_bytes(), f"clip{i}.wav") if i % 2 else (other.read_bytes(), f"other{i}.wav") for i in range(16)]
    barrier = threading.Barrier(16)

    def send(job):
        barrier.wait()
        return classify(server, *job)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(send, jobs))
    for (data, name), (status, pred) in zip(jobs, answers):
        assert status == 200 and pred["path"] == name
        expected = KNOWN_TRANSCRIPT if name.startswith("clip") else solo["transcript"]
        assert pred["transcript"] == expected and pred["intent"] == (KNOWN_INTENT if name.startswith("clip") else solo["intent"])
    sizes = server.classifier.batcher.batch_sizes[before:]
    assert sum(sizes) == 16 and len(sizes) < 16 and max(sizes) > 1


def test_serving_bench_counts_answers_latencies_and_errors(server):
    from assistant.bench.serving import concurrent, post_clip, sequential

    url = server.url + "api/classify"
    clips = [CLIP.read_bytes(), b"not audio at all"]
    assert post_clip(url, clips[1], "bad.wav")[0] == 400
    seq = sequential(url, clips[:1], 3)
    assert seq["n"] == 3 and seq["errors"] == 0 and 0 < seq["p50_s"] <= seq["p95_s"]
    run = concurrent(url, clips, clients=4, requests=10, max_seconds=60)
    # exactly the bounded count, every second request sends the non-audio clip (a counted error)
    assert run["n"] == 10 and run["clients"] == 4 and run["errors"] == 5
    assert run["requests_per_second"] == pytest.approx(10 / run["seconds"], rel=0.02)
    stopped = concurrent(url, clips[:1], clients=2, requests=1000, max_seconds=0.5)
    assert 0 < stopped["n"] < 1000 and stopped["errors"] == 0        # the time bound ended it


def _read_until_closed(sock, timeout: float = 10) -> str:
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data.decode()


def test_a_stalled_upload_gets_408_and_frees_its_thread(known_model):
    import socket

    from assistant.demo import Classifier, make_server

    srv = make_server(Classifier.from_dir(known_model), "127.0.0.1", 0, verbose=False, max_connections=1,
                      read_timeout=0.5)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = srv.server_address[:2]
        stalled = socket.create_connection((host, port))
        stalled.sendall(b"POST /api/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nonly this")
        # the one connection slot is taken: a second client is told so at once
        busy = socket.create_connection((host, port))
        reply = _read_until_closed(busy)
        assert reply.startswith("HTTP/1.1 503") and "busy" in reply
        reply = _read_until_closed(stalled)
        assert reply.startswith("HTTP/1.1 408") and "stalled" in reply
        stalled.close()
        time.sleep(0.2)                                   # the slot is free again: a normal request works
        status, pred = classify(srv, CLIP.read_bytes(), CLIP.name)
        assert status == 200 and pred["intent"] == KNOWN_INTENT
    finally:
        srv.shutdown()
        srv.server_close()


def test_page_info_and_unknown_routes(server):
    with urllib.request.urlopen(server.url, timeout=30) as r:
        page = r.read().decode()
    assert 'id="file"' in page and 'id="record"' in page and "/api/classify" in page
    with urllib.request.urlopen(server.url + "api/info", timeout=30) as r:
        info = json.loads(r.read())
    assert info["context_seconds"] == 6.0 and KNOWN_INTENT in info["intents"]
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(server.url + "nope", timeout=30)
    assert e.value.code == 404


def test_safe_filename_drops_folders_and_odd_characters():
    from assistant.demo import safe_filename

    assert safe_filename("../../etc/passwd") == "passwd"
    assert safe_filename("C:\\Users\\me\\clip one.wav") == "clip one.wav"
    assert safe_filename("") == "upload" and safe_filename("...") == "upload"
    assert "/" not in safe_filename("a/b<script>.wav")


def test_demo_without_a_model_says_what_to_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ASSISTANT_RUNS", str(tmp_path / "empty"))
    assert main(["demo"]) == 2
    assert "assistant run" in capsys.readouterr().err
    assert main(["demo", "--model", str(tmp_path / "missing")]) == 2
    assert str(tmp_path / "missing") in capsys.readouterr().err


# --------------------------------------------------------------------------------------- browser

@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("headless Chromium not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    # The fake microphone plays a 16 kHz copy of the clip (Chromium wants a plain PCM WAV).
    mic = tmp_path_factory.mktemp("mic") / "mic.wav"
    audio, sr = sf.read(str(CLIP), dtype="float32")
    sf.write(str(mic), np.concatenate([audio, np.zeros(sr // 2, np.float32)]), sr, subtype="PCM_16")
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={mic}",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _wait_for_outcome(driver, timeout: float = 60):
    """Until the page shows a result or an error; returns ("result"|"error", text)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def outcome(d):
        if d.find_element(By.ID, "error").is_displayed():
            return "error", d.find_element(By.ID, "error").text
        if d.find_element(By.ID, "result").is_displayed():
            return "result", d.find_element(By.ID, "result").text
        return False

    return WebDriverWait(driver, timeout).until(outcome)


def _text(driver, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id).text


def test_browser_upload_shows_the_intent_the_api_returns(server, browser):
    from selenium.webdriver.common.by import By

    _, api = classify(server, CLIP.read_bytes(), CLIP.name)
    browser.get(server.url)
    browser.find_element(By.ID, "file").send_keys(str(CLIP.resolve()))
    browser.find_element(By.ID, "classify").click()
    kind, text = _wait_for_outcome(browser)
    assert kind == "result", text
    assert _text(browser, "intent") == api["intent"] == KNOWN_INTENT
    assert _text(browser, "transcript") == api["transcript"]
    assert _text(browser, "response") == api["response"]
    assert _text(browser, "path") == CLIP.name
    assert "location = kitchen" in _text(browser, "slots")
    assert _text(browser, "confidence") == f"{api['confidence']:.3f}"
    assert "ms model" in _text(browser, "latency")


def test_browser_shows_the_servers_error_for_a_non_audio_file(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    notes = tmp_path / "shopping-notes.wav"
    notes.write_text("milk, eggs, bread\n")
    browser.get(server.url)
    browser.find_element(By.ID, "file").send_keys(str(notes))
    browser.find_element(By.ID, "classify").click()
    kind, text = _wait_for_outcome(browser)
    assert kind == "error"
    assert "shopping-notes.wav" in text and "not audio" in text
    assert not browser.find_element(By.ID, "result").is_displayed()


def test_browser_recording_is_converted_to_wav_and_classified(server, browser):
    """MediaRecorder gives webm/opus, which the server cannot read: the page converts it to WAV."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url)
    button = browser.find_element(By.ID, "record")
    button.click()
    WebDriverWait(browser, 30).until(lambda d: button.text == "Stop")
    browser.execute_async_script("setTimeout(arguments[arguments.length - 1], 1500)")  # 1.5 s of fake microphone
    button.click()
    kind, text = _wait_for_outcome(browser)
    assert kind == "result", text
    assert _text(browser, "path") == "recording.wav"
    assert _text(browser, "intent") == KNOWN_INTENT
