"""keyless.audit: event shape, fingerprints only, JWT redaction, sinks, a log that never raises."""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import pickle
import stat
import threading
from pathlib import Path

import jwt
import pytest

from keyless.audit import (
    AuditEvent,
    AuditLog,
    JsonlSink,
    LogSink,
    MemorySink,
    redact,
)
from keyless.clock import FakeClock, SystemClock
from keyless.config import AuditSpec
from keyless.context import WorkerContext
from keyless.errors import ExchangeFailed, SourceUnavailable
from keyless.secret import fingerprint
from keyless.tokens import SubjectToken

START = 1_700_000_000.0
ALL_FIELDS = {f.name for f in dataclasses.fields(AuditEvent)}


def make_jwt(**claims: object) -> str:
    body = {"iss": "https://idp.example", "sub": "worker-3", "aud": ["sts.amazonaws.com"],
            "exp": int(START) + 600, "iat": int(START)}
    body.update(claims)
    return jwt.encode(body, "test-signing-key-0123456789abcdef", algorithm="HS256")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture
def token() -> SubjectToken:
    return SubjectToken.from_jwt(make_jwt(), "test")


@pytest.fixture
def context() -> WorkerContext:
    return WorkerContext(job_id="job-1", task_id="", run_id="run-9", rank="3", local_rank="1",
                         node="", pid="4242", host="node-a")


# ----------------------------------------------------------------------------- the line

def test_json_line_has_every_field_and_iso_times(token: SubjectToken,
                                                 context: WorkerContext) -> None:
    sink = MemorySink()
    log = AuditLog([sink], clock=FakeClock(START))
    log.emit(AuditEvent.for_token("exchange", token, source="client_credentials", target="aws",
                                  context=context, principal="arn:aws:iam::123456789012:role/r",
                                  session_name="keyless-job-1-3"))
    (event,) = sink.events
    line = event.to_json()
    assert "\n" not in line
    data = json.loads(line)
    assert set(data) == ALL_FIELDS
    assert list(data) == sorted(data)
    assert data["kind"] == "exchange" and data["outcome"] == "ok"
    assert data["source"] == "client_credentials" and data["target"] == "aws"
    assert data["iss"] == "https://idp.example" and data["sub"] == "worker-3"
    assert data["aud"] == ["sts.amazonaws.com"]
    assert data["time"] == "2023-11-14T22:13:20.000Z"  # from the injected clock
    assert data["exp"] == "2023-11-14T22:23:20.000Z"
    assert data["principal"] == "arn:aws:iam::123456789012:role/r"
    assert data["session_name"] == "keyless-job-1-3"
    # empty context values are dropped
    assert data["context"] == {"job_id": "job-1", "run_id": "run-9", "rank": "3",
                               "local_rank": "1", "pid": "4242", "host": "node-a"}
    assert data["error"] is None and data["error_type"] is None


def test_token_appears_only_as_16_hex_prefix(token: SubjectToken) -> None:
    raw = token.token.reveal()
    line = AuditEvent.for_token("issue", token, source="file", target="token").to_json()
    data = json.loads(line)
    assert data["token_sha256"] == fingerprint(raw)
    assert len(data["token_sha256"]) == 16
    int(data["token_sha256"], 16)
    for segment in raw.split("."):
        assert segment not in line


def test_emitter_keeps_an_explicit_time() -> None:
    sink = MemorySink()
    AuditLog([sink], clock=FakeClock(START)).emit(
        AuditEvent(kind="refresh", source="file", target="gcp", outcome="ok", time=START + 5))
    assert sink.events[0].time == START + 5


def test_out_of_range_exp_still_renders() -> None:
    for exp in (1e300, -1e300):
        data = json.loads(AuditEvent(kind="issue", source="s", target="token", outcome="ok",
                                     exp=exp).to_json())
        assert isinstance(data["exp"], str)


def test_for_failure_keyless_error_keeps_message(context: WorkerContext) -> None:
    exc = ExchangeFailed("aws-sts: throttled; fix: retry later", retryable=True)
    event = AuditEvent.for_failure(exc, source="file", target="aws", context=context)
    assert (event.kind, event.outcome) == ("failure", "error")
    assert event.error == "aws-sts: throttled; fix: retry later"
    assert event.error_type == "ExchangeFailed"


def test_for_failure_foreign_exception_keeps_only_its_type() -> None:
    exc = RuntimeError("password=hunter2 leaked by a library")
    event = AuditEvent.for_failure(exc, source="file", target="aws", context=None)
    assert event.error == "RuntimeError" and event.error_type == "RuntimeError"
    assert "hunter2" not in event.to_json()


def test_for_failure_with_token_records_claims(token: SubjectToken) -> None:
    event = AuditEvent.for_failure(SourceUnavailable("idp: down"), source="cc", target="gcp",
                                   context={}, token=token)
    assert event.sub == "worker-3" and event.token_sha256 == token.fingerprint


# ----------------------------------------------------------------------------- redaction

def test_jwt_in_error_is_redacted(token: SubjectToken) -> None:
    raw = token.token.reveal()
    event = AuditEvent(kind="failure", source="file", target="aws", outcome="error",
                       error=f"aws-sts: rejected Bearer {raw} (bad aud)")
    line = event.to_json()
    assert raw not in line and raw.split(".")[2] not in line
    assert json.loads(line)["error"] == "aws-sts: rejected Bearer [redacted-jwt] (bad aud)"


def test_jwt_in_context_is_redacted() -> None:
    raw = make_jwt(sub="other")
    event = AuditEvent(kind="issue", source="env", target="token", outcome="ok",
                       context={"job_id": f"token={raw}", "rank": "0"})
    data = json.loads(event.to_json())
    assert data["context"] == {"job_id": "token=[redacted-jwt]", "rank": "0"}
    assert raw.split(".")[1] not in event.to_json()


@pytest.mark.parametrize("text", [
    "connect to sts.us-east-1.amazonaws.com failed",
    "see example.com.au and exchange.foo.bar",
    "version 1.2.3 of pkg.mod.attr",
    "no dots at all",
    "",
])
def test_redact_leaves_ordinary_dotted_text_alone(text: str) -> None:
    assert redact(text) == text


def test_redact_variants() -> None:
    signed = make_jwt()
    unsecured = b64(b'{"alg":"none"}') + "." + b64(b'{"sub":"x","exp":1}') + "."
    pretty = b64(b'{\n  "alg": "RS256"\n}') + "." + b64(b'{"sub":"x"}') + ".c2ln"
    glued = "tokeneyJ" + signed[3:]
    for raw in (signed, unsecured, pretty):
        assert redact(f"a {raw} b") == "a [redacted-jwt] b"
    assert redact(glued) == "token[redacted-jwt]"
    assert redact(f"{signed},{signed}") == "[redacted-jwt],[redacted-jwt]"


# ----------------------------------------------------------------------------- sinks

def test_log_sink_writes_json_to_keyless_audit(caplog: pytest.LogCaptureFixture,
                                               token: SubjectToken) -> None:
    caplog.set_level(logging.INFO, logger="keyless.audit")
    log = AuditLog([LogSink()], clock=FakeClock(START))
    log.emit(AuditEvent.for_token("issue", token, source="file", target="token"))
    records = [r for r in caplog.records if r.name == "keyless.audit"]
    assert len(records) == 1
    assert records[0].levelno == logging.INFO
    data = json.loads(records[0].getMessage())
    assert data["kind"] == "issue" and data["token_sha256"] == token.fingerprint
    assert token.token.reveal() not in caplog.text


def test_jsonl_sink_mode_0600_and_one_line_per_event_under_threads(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "events.jsonl"
    sink = JsonlSink(path)
    log = AuditLog([sink], clock=FakeClock(START))
    threads, per_thread = 8, 50

    def work(n: int) -> None:
        for i in range(per_thread):
            log.emit(AuditEvent(kind="refresh", source=f"t{n}", target="aws", outcome="ok",
                                session_name=f"s-{i}-" + "x" * 200))

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    log.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = path.read_text().splitlines()
    assert len(lines) == threads * per_thread
    seen = {(d["source"], d["session_name"]) for d in map(json.loads, lines)}
    assert len(seen) == threads * per_thread


def test_jsonl_sink_appends_to_existing_file_and_survives_pickle(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"kind":"earlier"}\n')
    sink = JsonlSink(path)
    sink.emit(AuditEvent(kind="issue", source="s", target="token", outcome="ok", time=START))
    clone = pickle.loads(pickle.dumps(sink))
    clone.emit(AuditEvent(kind="issue", source="s2", target="token", outcome="ok", time=START))
    sink.close()
    clone.close()
    assert [json.loads(x).get("source") for x in path.read_text().splitlines()] == \
        [None, "s", "s2"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_jsonl_sink_in_forked_child(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    sink = JsonlSink(path)
    event = AuditEvent(kind="issue", source="parent", target="token", outcome="ok", time=START)
    sink.emit(event)
    pid = os.fork()
    if pid == 0:  # child: a fresh descriptor and lock
        try:
            sink.emit(dataclasses.replace(event, source="child"))
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    sink.emit(dataclasses.replace(event, source="parent-again"))
    sink.close()
    sources = [json.loads(x)["source"] for x in path.read_text().splitlines()]
    assert sources == ["parent", "child", "parent-again"]


class BrokenSink:
    def __init__(self) -> None:
        self.calls = 0

    def emit(self, event: AuditEvent) -> None:
        self.calls += 1
        raise OSError(f"disk full while writing {event.sub}")


def test_failing_sink_does_not_raise_and_is_reported_once(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="keyless")
    broken, memory = BrokenSink(), MemorySink()
    log = AuditLog([broken, memory], clock=FakeClock(START))
    event = AuditEvent(kind="failure", source="file", target="aws", outcome="error",
                       sub="secret-subject", error="aws-sts: private detail")
    log.emit(event)
    log.emit(event)
    assert broken.calls == 2 and len(memory.events) == 2
    warnings = [r for r in caplog.records if r.name == "keyless" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert "BrokenSink" in text and "failure/error" in text
    assert "secret-subject" not in text and "private detail" not in text


def test_from_spec_builds_the_named_sinks(tmp_path: Path) -> None:
    assert [type(s) for s in AuditLog.from_spec(AuditSpec()).sinks] == [LogSink]
    spec = AuditSpec(sinks=["log", "jsonl"], jsonl_path=str(tmp_path / "x.jsonl"))
    log = AuditLog.from_spec(spec, clock=FakeClock(START))
    assert [type(s) for s in log.sinks] == [LogSink, JsonlSink]
    log.emit(AuditEvent(kind="issue", source="s", target="token", outcome="ok"))
    log.close()
    assert json.loads((tmp_path / "x.jsonl").read_text())["time"] == "2023-11-14T22:13:20.000Z"


def test_audit_log_pickles(tmp_path: Path) -> None:
    log = AuditLog([LogSink(), JsonlSink(tmp_path / "p.jsonl"), MemorySink()],
                   clock=SystemClock())
    clone = pickle.loads(pickle.dumps(log))
    clone.emit(AuditEvent(kind="issue", source="s", target="token", outcome="ok"))
    clone.close()
    assert (tmp_path / "p.jsonl").read_text().count("\n") == 1


def test_aws_tags_are_recorded_on_the_exchange_event_not_sent() -> None:
    """AssumeRoleWithWebIdentity has no Tags parameter: the rendered tags go on the audit
    event (and its JSON), so the record says what the worker asked to be tagged with."""
    event = AuditEvent.for_token("exchange", SubjectToken.from_jwt(make_jwt(), "test"),
                                 source="file", target="aws",
                                 tags={"team": "ml", "rank": "3"})
    assert event.to_dict()["tags"] == {"team": "ml", "rank": "3"}
    assert json.loads(event.to_json())["tags"] == {"team": "ml", "rank": "3"}
