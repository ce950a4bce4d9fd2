"""`froster augment-text` against a chat-completions server on 127.0.0.1, through the real `openai` client.

The server (http.server in a thread) decides each answer with a `reply(class_name, nth_request_for_that_class)`
function and logs every request it answered, so the tests can count what was asked.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from froster.pipeline.descriptions import (
    DEFAULT_INSTRUCTION,
    DEFAULT_SYSTEM,
    LLMSettings,
    describe_classes,
    read_descriptions,
)
from froster.pipeline.errors import ConfigError, FrosterError
from froster.stages.augment_text import AugmentTextConfig, run

KEY = "sk-froster-test-9f8e7d6c5b4a"
PREFIX = DEFAULT_INSTRUCTION.replace("{class}", "")
HANG = object()  # a reply that never comes (until the server closes)


def ok(text: str) -> tuple[int, dict, bytes]:
    body = {
        "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": "test-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
    }
    return 200, {"content-type": "application/json"}, json.dumps(body).encode()


def error(status: int, message: str = "try later", **headers: str) -> tuple[int, dict, bytes]:
    # without a Retry-After of its own, retry-after-ms keeps the client's backoff tiny (its default starts at 0.5 s)
    headers = {"content-type": "application/json", **(headers or {"retry-after-ms": "1"})}
    return status, headers, json.dumps({"error": {"message": message}}).encode()


def described(name: str, n: int) -> tuple[int, dict, bytes]:
    return ok(f"The video shows someone {name}")


class FakeLLM:
    """A chat-completions server on 127.0.0.1 with a request log: [(class, status)] for every answered request."""

    def __init__(self, reply=described) -> None:
        self.reply = reply
        self.log: list[tuple[str, int]] = []
        self.times: dict[str, list[float]] = {}
        self.bodies: list[dict] = []
        self.auth: set[str] = set()
        self.release = threading.Event()
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                user = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
                name = user[len(PREFIX):] if user.startswith(PREFIX) else user
                with fake._lock:
                    fake.bodies.append(body)
                    fake.auth.add(self.headers.get("authorization", ""))
                    fake.times.setdefault(name, []).append(time.monotonic())
                    nth = len(fake.times[name])
                answer = fake.reply(name, nth)
                if answer is HANG:
                    fake.release.wait(30)
                    return
                status, headers, payload = answer
                with fake._lock:  # logged before it is sent: the client cannot have it before the log does
                    fake.log.append((name, status))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def answered(self, status: int = 200) -> list[str]:
        return [name for name, s in self.log if s == status]

    def requests(self, name: str) -> int:
        return len(self.times.get(name, []))

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def llm():
    servers: list[FakeLLM] = []

    def start(reply=described) -> FakeLLM:
        servers.append(FakeLLM(reply))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def settings(server: FakeLLM, max_retries: int = 2) -> LLMSettings:
    return LLMSettings(model="test-model", base_url=server.url, api_key=KEY, timeout_s=10, max_retries=max_retries)


CLASSES = ["abseiling", "air drumming", "brushing teeth", "clean and jerk", "dribbling basketball"]


def test_success_asks_each_class_once_and_saves_progress(llm, tmp_path):
    server = llm()
    progress = tmp_path / "d.json.progress.jsonl"
    calls = []
    result = describe_classes(CLASSES, settings(server), progress_path=progress, concurrency=3,
                              on_progress=lambda done, total: calls.append((done, total)))
    assert result.descriptions == {c: [f"The video shows someone {c}"] for c in CLASSES}
    assert list(result.descriptions) == CLASSES and result.missing == []
    assert (result.asked, result.resumed, result.retried) == (5, 0, 0)
    assert sorted(server.answered()) == sorted(CLASSES)
    assert calls[0] == (0, 5) and calls[-1] == (5, 5) and len(calls) == 6
    body = server.bodies[0]
    assert body["model"] == "test-model"
    assert body["messages"][0] == {"role": "system", "content": DEFAULT_SYSTEM}
    assert server.auth == {f"Bearer {KEY}"}
    records = [json.loads(line) for line in progress.read_text().splitlines()]
    assert sorted(r["class"] for r in records) == sorted(CLASSES)
    assert {r["instruction"] for r in records} == {DEFAULT_INSTRUCTION}


def test_429_with_retry_after_is_retried_by_the_client(llm):
    server = llm(lambda name, n: error(429, "slow down", **{"retry-after": "0.2"}) if n == 1 else described(name, n))
    result = describe_classes(["abseiling"], LLMSettings(model="m", base_url=server.url, api_key=KEY, max_retries=2))
    assert result.descriptions == {"abseiling": ["The video shows someone abseiling"]}
    assert server.log == [("abseiling", 429), ("abseiling", 200)]
    first, second = server.times["abseiling"]
    assert second - first >= 0.2  # the client waited as told
    assert result.retried == 1


def test_500_until_give_up_reports_the_class_missing_and_keeps_the_others(llm, tmp_path):
    server = llm(lambda name, n: error(500) if name == "brushing teeth" else described(name, n))
    progress = tmp_path / "p.jsonl"
    result = describe_classes(CLASSES, settings(server, max_retries=2), progress_path=progress)
    assert result.missing == ["brushing teeth"]
    assert list(result.descriptions) == [c for c in CLASSES if c != "brushing teeth"]
    assert server.requests("brushing teeth") == 3  # 1 + the client's 2 retries; ours do not re-ask a server error
    assert "brushing teeth" not in progress.read_text()
    assert result.retried == 2


def test_malformed_empty_long_and_multiparagraph_answers_are_asked_again(llm):
    bad = {
        "abseiling": (200, {"content-type": "application/json"}, b"this is not json"),
        "air drumming": ok("   "),
        "brushing teeth": ok("x" * 500),
        "clean and jerk": ok("First paragraph.\n\nSecond paragraph."),
        "dribbling basketball": (200, {"content-type": "application/json"}, b'{"id": "x", "choices": []}'),
    }
    server = llm(lambda name, n: bad[name] if n == 1 else ok(f'"{name.title()}: The video shows {name}"'))
    result = describe_classes(CLASSES, settings(server), attempts=3, max_chars=400)
    # quotes and the leading "Name:" are stripped
    assert result.descriptions == {c: [f"The video shows {c}"] for c in CLASSES}
    assert all(server.requests(c) == 2 for c in CLASSES)
    assert result.retried == 5


def test_an_answer_never_usable_is_given_up_after_the_attempts_and_never_invented(llm):
    server = llm(lambda name, n: ok("") if name == "abseiling" else described(name, n))
    result = describe_classes(["abseiling", "archery"], settings(server), attempts=3)
    assert result.missing == ["abseiling"] and "abseiling" not in result.descriptions
    assert server.requests("abseiling") == 3
    assert result.descriptions == {"archery": ["The video shows someone archery"]}


def test_interrupted_run_then_rerun_asks_each_class_once(llm, tmp_path):
    server = llm()
    progress = tmp_path / "p.jsonl"

    def interrupt_after_two(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        describe_classes(CLASSES, settings(server), progress_path=progress, concurrency=1,
                         on_progress=interrupt_after_two)
    assert len(server.answered()) == 2
    result = describe_classes(CLASSES, settings(server), progress_path=progress, concurrency=1)
    assert result.resumed == 2 and result.asked == 3 and result.missing == []
    assert sorted(server.answered()) == sorted(CLASSES)  # none asked twice, none lost
    assert list(result.descriptions) == CLASSES


_CHILD = """
import os, sys
from froster.pipeline.descriptions import LLMSettings, describe_classes
url, progress, classes = sys.argv[1], sys.argv[2], sys.argv[3:]
s = LLMSettings(model="test-model", base_url=url, api_key=os.environ["FROSTER_TEST_KEY"], timeout_s=60)
describe_classes(classes, s, progress_path=progress, concurrency=2)
"""


def test_killed_process_then_rerun_asks_only_for_what_is_missing(llm, tmp_path):
    classes = [f"class {i}" for i in range(8)]
    answered = threading.Semaphore(3)  # the first 3 requests are answered, the rest hang until the kill
    server = llm(lambda name, n: described(name, n) if answered.acquire(blocking=False) else HANG)
    progress = tmp_path / "p.jsonl"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, server.url, str(progress), *classes],
        env={**os.environ, "FROSTER_TEST_KEY": KEY}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if progress.exists() and progress.read_text().count("\n") >= 3:
                break
            time.sleep(0.02)
        else:
            pytest.fail(f"child wrote no progress: {child.stderr.read().decode()[-2000:]}")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    assert len(server.answered()) == 3
    server.reply = described
    result = describe_classes(classes, settings(server), progress_path=progress)
    assert result.resumed == 3 and result.missing == [] and list(result.descriptions) == classes
    assert sorted(server.answered()) == sorted(classes)  # every class answered exactly once over both runs
    assert KEY not in progress.read_text()


def test_key_is_never_written_or_logged_even_on_errors(llm, tmp_path, monkeypatch, caplog):
    echo = f"invalid token Bearer {KEY} ({KEY})"
    # a key echoed where a log message cuts the server's text (80 / 200 characters) must not leave a piece behind
    replies = {
        "abseiling": lambda n: described("abseiling", n),
        "air drumming": lambda n: error(500, "y" * 190 + KEY),
        "brushing teeth": lambda n: (200, {"content-type": "application/json"}, f"{'x' * 70}{KEY}".encode()),
    }
    server = llm(lambda name, n: replies[name](n))
    classes_file = tmp_path / "classes.txt"
    classes_file.write_text("abseiling\nair drumming\nbrushing teeth\n")
    out = tmp_path / "descriptions.json"
    monkeypatch.setenv("FROSTER_TEST_KEY", KEY)
    caplog.set_level(logging.DEBUG)  # the openai and HTTP libraries' debug records too
    config = AugmentTextConfig(classes=classes_file, out=out, model="test-model", base_url=server.url,
                               api_key_env="FROSTER_TEST_KEY", max_retries=1)
    with pytest.raises(FrosterError) as missing:
        run(config)
    assert "2 of 3 classes" in str(missing.value)
    assert server.auth == {f"Bearer {KEY}"}  # the key was used...
    # ...and is nowhere else
    assert KEY not in str(missing.value)
    assert KEY[:10] not in caplog.text and "***" in caplog.text
    assert KEY not in out.read_text() and KEY not in config.progress_path.read_text()
    assert KEY not in repr(config) and KEY not in repr(settings(server))
    doc = json.loads(out.read_text())
    assert doc["missing"] == ["air drumming", "brushing teeth"]

    # a refused key stops the run with one message, which does not repeat the key the server echoed
    refused = llm(lambda name, n: error(401, echo))
    with pytest.raises(FrosterError) as fatal:
        run(AugmentTextConfig(classes=classes_file, out=tmp_path / "other.json", base_url=refused.url,
                              api_key_env="FROSTER_TEST_KEY"))
    assert "401" in str(fatal.value) and "--api-key-env" in str(fatal.value)
    assert KEY[:10] not in str(fatal.value) and KEY[:10] not in caplog.text


def test_stage_writes_the_file_stage_one_reads(llm, tmp_path, monkeypatch):
    server = llm(lambda name, n: ok(f"{name} take {n}"))
    classes_file = tmp_path / "classes.txt"
    classes_file.write_text("abseiling\nBrushingTeeth\n")
    out = tmp_path / "sub" / "d.json"
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # a local server needs no key
    path = run(AugmentTextConfig(classes=classes_file, out=out, model="local", base_url=server.url, n_per_class=2,
                                 concurrency=1, instruction="Please describe this action in the video {class}"))
    assert path == out
    doc = json.loads(out.read_text())
    assert doc["model"] == "local" and doc["instruction"] == DEFAULT_INSTRUCTION and doc["n_per_class"] == 2
    assert doc["fallback"] is False and doc["missing"] == [] and doc["froster_version"]
    # names exactly as in the class file; the question used the prompt name
    assert doc["descriptions"] == {"abseiling": ["abseiling take 1", "abseiling take 2"],
                                   "BrushingTeeth": ["brushing teeth take 1", "brushing teeth take 2"]}
    assert read_descriptions(out, ["abseiling", "BrushingTeeth"]) == {
        "abseiling": ["abseiling: abseiling take 1", "abseiling: abseiling take 2"],
        "BrushingTeeth": ["brushing teeth: brushing teeth take 1", "brushing teeth: brushing teeth take 2"],
    }
    # a second run finds every answer in the progress file and asks nothing
    before = len(server.log)
    run(AugmentTextConfig(classes=classes_file, out=out, model="local", base_url=server.url, n_per_class=2))
    assert len(server.log) == before


def test_offline_sends_nothing_and_says_fallback(llm, tmp_path, monkeypatch):
    server = llm()
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    classes_file = tmp_path / "classes.txt"
    classes_file.write_text("abseiling\nbrushing teeth\n")
    out = run(AugmentTextConfig(classes=classes_file, out=tmp_path / "d.json", base_url=server.url, offline=True))
    doc = json.loads(out.read_text())
    assert doc["fallback"] is True and doc["model"] is None
    assert read_descriptions(out) == {"abseiling": ["abseiling: A video showing abseiling."],
                                      "brushing teeth": ["brushing teeth: A video showing brushing teeth."]}
    assert server.times == {}


def test_refused_model_and_unreachable_server_stop_the_run(llm, tmp_path):
    server = llm(lambda name, n: error(404, "model 'nope' does not exist"))
    with pytest.raises(FrosterError, match="404.*--model"):
        describe_classes(CLASSES, settings(server))
    assert len(server.log) == 1 or all(s == 404 for _, s in server.log)

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nowhere = LLMSettings(model="m", base_url=f"http://user:pw@127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
    with pytest.raises(FrosterError, match="cannot reach") as e:
        describe_classes(["abseiling"], nowhere, progress_path=tmp_path / "p.jsonl")
    assert "pw" not in str(e.value) and KEY not in str(e.value)


def test_missing_key_without_base_url_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("MY_KEY", raising=False)
    classes_file = tmp_path / "classes.txt"
    classes_file.write_text("abseiling\n")
    with pytest.raises(FrosterError, match="MY_KEY"):
        run(AugmentTextConfig(classes=classes_file, out=tmp_path / "d.json", api_key_env="MY_KEY"))


@pytest.mark.parametrize(
    "field, value",
    [("n_per_class", 0), ("concurrency", 0), ("attempts", 0), ("max_chars", 0), ("max_retries", -1),
     ("timeout_s", 0), ("instruction", "describe the action"), ("base_url", "localhost:8000"),
     ("api_key_env", "MY KEY"), ("out", "d.txt"), ("model", " ")],
)
def test_config_validation_names_the_field(tmp_path, field, value):
    kwargs = {"classes": tmp_path / "c.txt", "out": tmp_path / "d.json", field: value}
    with pytest.raises(ConfigError, match=field):
        AugmentTextConfig(**kwargs)


def test_cli_offline_and_defaults_match_the_config(tmp_path):
    from typer.main import get_command
    from typer.testing import CliRunner

    from froster.cli import app

    classes_file = tmp_path / "classes.txt"
    classes_file.write_text("abseiling\n")
    out = tmp_path / "d.json"
    result = CliRunner().invoke(app, ["augment-text", "--classes", str(classes_file), "--out", str(out), "--offline"])
    assert result.exit_code == 0, result.output
    assert str(out) in result.output and json.loads(out.read_text())["fallback"] is True

    command = get_command(app).commands["augment-text"]
    defaults = {p.name: p.default for p in command.params}
    config = AugmentTextConfig(classes=classes_file, out=out)
    for option, field in [("model", "model"), ("instruction", "instruction"), ("system", "system"),
                          ("n_per_class", "n_per_class"), ("api_key_env", "api_key_env"),
                          ("concurrency", "concurrency"), ("timeout", "timeout_s"), ("max_retries", "max_retries"),
                          ("attempts", "attempts"), ("max_chars", "max_chars")]:
        assert defaults[option] == getattr(config, field), option
    assert all(p.help for p in command.params)

    bad = CliRunner().invoke(app, ["augment-text", "--classes", str(tmp_path / "none.txt"), "--out", str(out)])
    assert bad.exit_code == 1 and "none.txt" in bad.output
