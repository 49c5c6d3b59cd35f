"""`keyless audit` on the JSONL of a real run with rollovers (issue 11, point 3): three workers
(ranks 0 and 1 read S3 across 4-second sessions and 8-second tokens; rank 2's subject is not
trusted by the role, so its exchanges fail) write one size-rotated JSONL file; the per-worker
table, the JSON and an HTML timeline that headless Chromium renders to a PNG with one row per
worker (checked in the page's structure and in the picture's pixels)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from keyless.context import WorkerContext
from keyless.identity import Keyless
from tests.e2e.conftest import Federation, LeakGuard

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
# Debian's chromium on a machine with no network but loopback (see dev.py ensure_chromium)
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars")
TOKEN_BLUE = (0x7A, 0xA6, 0xE6)   # .bar.token in keyless.audit.html
CRED_BLUE = (0x3C, 0x7D, 0xD9)    # .bar
FAILURE_RED = (0xD1, 0x2F, 0x2F)  # .mark.failure


def run_workers(federation: Federation, audit: dict[str, Any], seconds: float) -> list[str]:
    aws = federation.aws
    key = federation.prefix + "shard.bin"
    aws.put_object(aws.bucket, key, b"shard")
    problems: list[str] = []

    configs = {client: {**federation.config(client, session_name="rank-{rank}"), "audit": audit}
               for client in ("shortlived", "intruder")}

    def worker(rank: int, client: str) -> None:
        config = configs[client]
        identity = Keyless(config, context=WorkerContext.from_environment(rank=str(rank)))
        s3 = federation.s3(identity.boto3_session())
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                assert s3.get_object(Bucket=aws.bucket, Key=key)["Body"].read() == b"shard"
            except Exception as exc:
                problems.append(f"rank {rank}: {type(exc).__name__}")
                if client == "shortlived":
                    return
            time.sleep(0.25 if client == "shortlived" else 2.0)
        identity.audit.close()

    threads = [threading.Thread(target=worker, args=(0, "shortlived")),
               threading.Thread(target=worker, args=(1, "shortlived")),
               threading.Thread(target=worker, args=(2, "intruder"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return problems


class Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sections: list[dict[str, Any]] = []
        self.tags: list[str] = []
        self.attr_names: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attr_names.extend(name for name, _ in attrs)
        values = dict(attrs)
        classes = (values.get("class") or "").split()
        if tag == "section" and "worker" in classes:
            self.sections.append({"label": values.get("data-worker")})
        elif self.sections:
            for name in classes:
                self.sections[-1][name] = self.sections[-1].get(name, 0) + 1


def png_pixels(data: bytes) -> tuple[int, int, list[bytes], int]:
    """Decode an 8-bit, non-interlaced RGB/RGBA PNG: (width, height, rows, bytes/pixel)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = chunk
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and color in (2, 6) and interlace == 0
    bpp = 3 if color == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = previous[i]
            c = previous[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) \
                    & 0xFF
        rows.append(bytes(line))
        previous = line
    return width, height, rows, bpp


def bands(rows: list[bytes], bpp: int, color: tuple[int, int, int], min_pixels: int) -> int:
    """How many separate horizontal bands of rows hold at least ``min_pixels`` of ``color``."""
    target = bytes(color)
    count, inside = 0, False
    for row in rows:
        hits = sum(1 for x in range(0, len(row), bpp) if row[x:x + 3] == target)
        if hits >= min_pixels and not inside:
            count += 1
        inside = hits >= min_pixels
    return count


def test_audit_report_and_timeline_in_chromium(federation: Federation, tmp_path: Path,
                                               leak_guard: LeakGuard) -> None:
    federation.aws.front.max_session_seconds = 4
    path = tmp_path / "audit" / "audit.jsonl"
    audit = {"sinks": ["jsonl"], "jsonl_path": str(path), "jsonl_max_bytes": 4096,
             "jsonl_backups": 50}
    problems = run_workers(federation, audit, seconds=11)
    assert [p for p in problems if not p.startswith("rank 2")] == []
    assert problems, "rank 2's untrusted subject should have failed"
    files = sorted(str(p) for p in path.parent.iterdir())
    assert len(files) > 1, "the JSONL file never rotated"

    keyless = [sys.executable, "-m", "keyless", "audit", *files]
    table = subprocess.run(keyless, capture_output=True, text=True, timeout=60, check=True)
    as_json = subprocess.run([*keyless, "--format", "json"], capture_output=True, text=True,
                             timeout=60, check=True)
    page_path = tmp_path / "timeline.html"
    subprocess.run([*keyless, "--format", "html", "-o", str(page_path)], timeout=60, check=True)
    page = page_path.read_text()
    leak_guard.add(table.stdout, table.stderr, as_json.stdout, page,
                   *(Path(f).read_text() for f in files))

    lines = table.stdout.splitlines()
    assert lines[0].startswith("3 worker(s)")
    workers = [line for line in lines if line.startswith("worker ")]
    assert [w.split()[1] for w in workers] == ["rank=0", "rank=1", "rank=2"]
    assert any(line.startswith("  FAILURE ") and " aws " in line for line in lines)
    report = json.loads(as_json.stdout)
    by_rank = {w["context"]["rank"]: w for w in report["workers"]}
    for rank in ("0", "1"):
        identities = {i["target"]: i for i in by_rank[rank]["identities"]}
        assert len(identities["aws"]["refreshed"]) >= 2, "expected two AWS rollovers"
        assert len(identities["token"]["refreshed"]) >= 1, "expected a token rollover"
        assert identities["aws"]["session_name"] == f"rank-{rank}"
        assert by_rank[rank]["failures"] == []
    assert by_rank["2"]["failures"] and not [i for i in by_rank["2"]["identities"]
                                             if i["target"] == "aws"]

    parser = Page()
    parser.feed(page)
    assert [s["label"].split()[0] for s in parser.sections] == ["rank=0", "rank=1", "rank=2"]
    for section in parser.sections[:2]:
        assert section["bar"] >= 4 and section["refresh"] >= 3 and "failure" not in section
    assert parser.sections[2]["failure"] >= 1
    assert not {"script", "link", "img", "iframe"} & set(parser.tags)
    assert not {"src", "href"} & set(parser.attr_names) and "url(" not in page

    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (python3 dev.py test installs it when "
                    "run as root: apt-get install -y chromium)")
    shot = tmp_path / "timeline.png"
    with tempfile.TemporaryDirectory(prefix="keyless-chromium-") as profile:
        browser = subprocess.run(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}",
             "--window-size=1400,900", page_path.as_uri()],
            capture_output=True, text=True, timeout=120)
    assert shot.exists(), browser.stderr[-2000:]
    shutil.copy(shot, Path(tempfile.gettempdir()) / "keyless-audit-timeline.png")
    width, height, rows, bpp = png_pixels(shot.read_bytes())
    assert (width, height) == (1400, 900)
    assert shot.stat().st_size > 10_000
    # one subject-token lane per worker: three bands of the token colour, one above another
    assert bands(rows, bpp, TOKEN_BLUE, min_pixels=20) == 3
    assert bands(rows, bpp, CRED_BLUE, min_pixels=20) == 2  # ranks 0 and 1 held AWS roles
    # rank 2's failure marks (4 px each, several in its lane; the legend's swatch is one)
    assert bands(rows, bpp, FAILURE_RED, min_pixels=8) == 1
