"""keyless.audit.sinks: size-rotated JSONL (threads and processes), the MLflow sink on a real
local file store, the OpenTelemetry sink read back through the SDK's in-memory reader and
exporter, and a missing extra named in the error."""

from __future__ import annotations

import json
import os
import pickle
import random
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from keyless.audit import AuditEvent, AuditLog, JsonlSink, redact
from keyless.audit.sinks import MlflowSink, OtelSink, RotatingJsonlSink, build_sink
from keyless.clock import FakeClock
from keyless.config import AuditSpec
from keyless.context import WorkerContext
from keyless.errors import ConfigError, ExchangeFailed
from keyless.identity import Keyless
from keyless.tokens import SubjectToken
from tests.core.helpers import Recorder, make_jwt

START = 1_700_000_000.0


def event(n: int = 0, *, rank: str = "0", pad: int = 0, kind: str = "issue") -> AuditEvent:
    return AuditEvent(kind=kind, source="file", target="token", outcome="ok",  # type: ignore[arg-type]
                      iss="https://issuer.test", sub=f"worker-{n}" + "x" * pad,
                      exp=START + 600 + n, token_sha256=f"{n:016x}", time=START + n,
                      context={"rank": rank, "pid": "1"})


def lines_of(path: Path) -> list[dict[str, Any]]:
    files = sorted(path.parent.glob(path.name + "*"))
    return [json.loads(line) for f in files for line in f.read_text().splitlines()]


# ----------------------------------------------------------------------------- rotation

def test_rotation_keeps_every_line_whole_and_at_most_backups_files(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = RotatingJsonlSink(path, max_bytes=2048, backups=3)
    for n in range(40):
        sink.emit(event(n, pad=100))
    sink.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2", "audit.jsonl.3"]
    for p in tmp_path.iterdir():
        assert p.stat().st_size <= 2048
        assert oct(p.stat().st_mode & 0o777) == oct(0o600)
    kept = [e["sub"] for e in lines_of(path)]
    # the newest events survive, in order inside each file, none torn
    assert f"worker-39{'x' * 100}" in kept
    assert f"worker-0{'x' * 100}" not in kept
    newest = [json.loads(line)["sub"] for line in path.read_text().splitlines()]
    assert newest == sorted(newest, key=lambda s: int(s.split("-")[1].rstrip("x")))


def test_rotation_with_enough_backups_loses_nothing_across_threads(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = RotatingJsonlSink(path, max_bytes=4096, backups=100)

    def work(rank: int) -> None:
        for n in range(50):
            sink.emit(event(n, rank=str(rank), pad=50))

    threads = [threading.Thread(target=work, args=(r,)) for r in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events = lines_of(path)
    assert len(events) == 200
    assert {(e["context"]["rank"], e["sub"]) for e in events} == {
        (str(r), f"worker-{n}{'x' * 50}") for r in range(4) for n in range(50)}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_rotation_is_safe_across_processes_sharing_the_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = RotatingJsonlSink(path, max_bytes=3000, backups=200)
    pids = []
    for rank in range(3):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = 0
            try:
                for n in range(60):
                    sink.emit(event(n, rank=str(rank), pad=40))
            except BaseException:
                code = 1
            os._exit(code)
        pids.append(pid)
    for pid in pids:
        assert os.waitpid(pid, 0)[1] == 0
    events = lines_of(path)
    assert len(events) == 180, "a line was lost or duplicated by a rotation race"
    files = list(tmp_path.iterdir())
    assert all(f.stat().st_size <= 3000 for f in files)
    assert len(files) > 3


def test_from_spec_builds_rotation_only_when_asked(tmp_path: Path) -> None:
    plain = AuditLog.from_spec(AuditSpec(sinks=["jsonl"], jsonl_path=str(tmp_path / "a")))
    assert type(plain.sinks[0]) is JsonlSink
    rotated = AuditLog.from_spec(AuditSpec(sinks=["jsonl"], jsonl_path=str(tmp_path / "b"),
                                           jsonl_max_bytes=4096, jsonl_backups=2))
    sink = rotated.sinks[0]
    assert isinstance(sink, RotatingJsonlSink) and (sink.max_bytes, sink.backups) == (4096, 2)
    copy = pickle.loads(pickle.dumps(sink))
    assert isinstance(copy, RotatingJsonlSink) and copy.max_bytes == 4096
    with pytest.raises(ValueError, match="jsonl_max_bytes"):
        AuditSpec(sinks=["jsonl"], jsonl_path="x", jsonl_max_bytes=10)


def test_a_missing_extra_is_named() -> None:
    for sink, extra, module in (("mlflow", "mlflow", "mlflow"),
                                ("otel", "otel", "opentelemetry")):
        code = (f"import sys; sys.modules[{module!r}] = None\n"
                "from keyless.audit import AuditLog; from keyless.config import AuditSpec\n"
                "from keyless.errors import ConfigError\n"
                f"try:\n    AuditLog.from_spec(AuditSpec(sinks=['log', {sink!r}]))\n"
                "except ConfigError as e:\n    print(e)\n")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=60)
        assert f"pip install 'keyless[{extra}]'" in out.stdout, out.stderr
        assert out.stdout.startswith("audit: the ")
    with pytest.raises(ConfigError, match="unknown sink"):
        build_sink("nope", AuditSpec())


# ----------------------------------------------------------------------------- mlflow

@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, str]:
    """A real MLflow file store in tmp_path and a run in it: (client, run_id)."""
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 opt-in for file stores
    client = mlflow.MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    experiment = client.create_experiment("keyless-unit")
    run = client.create_run(experiment).info.run_id
    return client, run


def download_all(client: Any, run: str, dst: Path) -> dict[str, str]:
    local = Path(client.download_artifacts(run, "keyless", str(dst)))
    return {str(p.relative_to(local)): p.read_text() for p in local.rglob("*") if p.is_file()}


def test_mlflow_sink_tags_and_merged_timeline(mlflow_store: tuple[Any, str],
                                              tmp_path: Path) -> None:
    client, run = mlflow_store
    raw = make_jwt(now=START, sub="trainer", iss="https://issuer.test")
    token = SubjectToken.from_jwt(raw, "client_credentials")
    sinks = [MlflowSink(client=client, environ={"MLFLOW_RUN_ID": run}, flush_at_exit=False)
             for _ in range(2)]
    clock = FakeClock(START)
    for rank, sink in enumerate(sinks):
        log = AuditLog([sink], clock=clock)
        ctx = WorkerContext(job_id="job-1", rank=str(rank), pid=str(100 + rank), host="h")
        log.emit(AuditEvent.for_token("issue", token, source="client_credentials",
                                      target="token", context=ctx))
        clock.advance(30)
        log.emit(AuditEvent.for_token("exchange", token, source="client_credentials",
                                      target="aws", context=ctx, principal="arn:aws:iam::1:role/r",
                                      session_name=f"rank-{rank}"))
        clock.advance(30)
        log.emit(AuditEvent.for_failure(ExchangeFailed(f"aws-sts: boom {raw}"),
                                        source="client_credentials", target="aws", context=ctx))
        assert sink.pending
        log.close()  # flushes
        assert not sink.pending
    tags = client.get_run(run).data.tags
    assert tags["keyless.issuer"] == "https://issuer.test"
    assert tags["keyless.subject"] == "trainer"
    assert tags["keyless.principal"] == "arn:aws:iam::1:role/r"
    assert tags["keyless.rank.0.session_name"] == "rank-0"
    assert tags["keyless.rank.1.session_name"] == "rank-1"
    files = download_all(client, run, tmp_path / "dl")
    assert sorted(f for f in files if f.startswith("workers/")) == sorted(
        f"workers/{s._part}" for s in sinks)
    timeline = json.loads(files["identity-timeline.json"])
    assert timeline["run_id"] == run
    assert [w["context"]["rank"] for w in timeline["workers"]] == ["0", "1"]
    for worker in timeline["workers"]:
        assert {i["target"] for i in worker["identities"]} == {"token", "aws"}
        assert len(worker["failures"]) == 1
    assert files["identity-timeline.html"].count('<section class="worker"') == 2
    everything = json.dumps(tags) + json.dumps(client.get_run(run).data.params) + \
        "".join(files.values())
    assert raw not in everything and redact(everything) == everything


def test_mlflow_sink_without_a_run_keeps_events_until_one_is_known(
        mlflow_store: tuple[Any, str], tmp_path: Path) -> None:
    client, run = mlflow_store
    environ: dict[str, str] = {}
    sink = MlflowSink(client=client, environ=environ, flush_at_exit=False)
    sink.emit(event(1))
    with pytest.raises(ConfigError, match="MLFLOW_RUN_ID"):
        sink.flush()
    environ["MLFLOW_RUN_ID"] = run
    sink.emit(event(2))
    sink.flush()
    assert sink.run_id() == run
    timeline = json.loads(download_all(client, run, tmp_path / "d")["identity-timeline.json"])
    assert len(timeline["workers"][0]["identities"]) == 2  # both events, none dropped
    copy = pickle.loads(pickle.dumps(sink))
    assert isinstance(copy, MlflowSink) and not copy.pending


def test_mlflow_sink_names_an_unreachable_run(mlflow_store: tuple[Any, str]) -> None:
    client, _ = mlflow_store
    sink = MlflowSink(client=client, run_id="0" * 32, flush_at_exit=False)
    with pytest.raises(Exception, match="mlflow sink: tagging run") as info:
        sink.emit(event(1))
    assert "MLFLOW_TRACKING_URI" in str(info.value)


# ----------------------------------------------------------------------------- opentelemetry

def _metrics(reader: Any) -> dict[str, Any]:
    data = reader.get_metrics_data()
    found: dict[str, Any] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found[metric.name] = metric.data.data_points
    return found


def test_otel_sink_span_events_and_counters_with_refreshes_and_a_failure() -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    exporter = InMemorySpanExporter()
    tracers = TracerProvider()
    tracers.add_span_processor(SimpleSpanProcessor(exporter))
    clock = FakeClock(START)
    minted: list[str] = []
    fail_next = [False]

    def idp(request: httpx.Request) -> httpx.Response:
        if fail_next[0]:
            fail_next[0] = False
            return httpx.Response(503, json={"error": "temporarily_unavailable"})
        minted.append(make_jwt(100, now=clock.time(), sub="trainer", aud="api://train"))
        return httpx.Response(200, json={"access_token": minted[-1], "token_type": "Bearer",
                                         "expires_in": 100})

    config = {"source": {"type": "client_credentials", "token_url": "https://idp.test/token",
                         "client_id": "trainer", "client_secret": "s3cr3t-value",
                         "audience": "api://train"},
              "target": {"oauth2": {"token_url": "https://sts.test/token"}},
              "refresh": {"at_fraction": 0.5, "jitter_fraction": 0.0}}
    audit = AuditLog([OtelSink(meter_provider=meters)], clock=clock)
    identity = Keyless(config, context=WorkerContext(rank="3", pid="7"), clock=clock,
                       http=Recorder(idp).http, audit=audit, rng=random.Random(1))
    with tracers.get_tracer("test").start_as_current_span("train"):
        identity.subject_token()              # issue, exp = START + 100
        clock.advance(60)
        identity.subject_token()              # refresh with 40 s left
        clock.advance(60)
        fail_next[0] = True
        identity.subject_token()              # the refresh fails; the valid token is served
        clock.advance(5)
        identity.subject_token()              # the retry succeeds: 35 s left
    [span] = exporter.get_finished_spans()
    assert [e.name for e in span.events] == ["keyless.issue", "keyless.refresh",
                                            "keyless.failure", "keyless.refresh"]
    first = span.events[0].attributes
    assert first is not None
    assert first["keyless.sub"] == "trainer" and first["keyless.context.rank"] == "3"
    assert first["keyless.token_sha256"] and first["keyless.outcome"] == "ok"
    failure = span.events[2].attributes
    assert failure is not None and failure["keyless.error_type"]
    points = _metrics(reader)
    assert [p.value for p in points["keyless.issuances"]] == [1]
    assert [p.value for p in points["keyless.refreshes"]] == [2]
    assert [p.value for p in points["keyless.failures"]] == [1]
    [histogram] = points["keyless.refresh.validity_remaining"]
    assert histogram.count == 2 and histogram.sum == pytest.approx(40 + 35)
    assert dict(points["keyless.failures"][0].attributes)["keyless.target"] == "token"
    text = repr([(e.name, dict(e.attributes or {})) for e in span.events]) + repr(points)
    assert "s3cr3t-value" not in text and all(t not in text for t in minted)
    assert redact(text) == text
    assert isinstance(pickle.loads(pickle.dumps(audit.sinks[0])), OtelSink)
