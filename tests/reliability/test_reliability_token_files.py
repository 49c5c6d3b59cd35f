"""Token-file atomicity: readers hammering a token file while it is rewritten thousands of
times (``TokenDirectory.write`` and ``keyless.files.write_private_file``) never see a partial,
empty or missing file, and nothing is left behind."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

from keyless.delivery import TokenDirectory
from keyless.delivery.files import write_private_file

WRITES = 1500
READERS = 3


def _content(n: int) -> str:
    body = f"{n}." + "x" * (16 + (n * 977) % 6000)  # sizes vary: a torn write would show
    return f"{body}.{hashlib.sha256(body.encode()).hexdigest()}"


def _intact(text: str) -> bool:
    body, _, digest = text.rpartition(".")
    return bool(body) and hashlib.sha256(body.encode()).hexdigest() == digest


def _hammer(path: Path, write: Callable[[str], Path]) -> tuple[int, list[str]]:
    write(_content(0))
    stop = threading.Event()
    problems: list[str] = []
    reads = [0] * READERS
    last_seen = [0] * READERS

    def reader(i: int) -> None:
        while not stop.wait(0.0002):  # yield the GIL to the writer between reads
            try:
                text = path.read_text()
            except FileNotFoundError:
                problems.append("missing")
                continue
            reads[i] += 1
            if not _intact(text):
                problems.append(f"partial read of {len(text)} characters")
                continue
            n = int(text.split(".", 1)[0])
            if n < last_seen[i]:
                problems.append(f"went back from version {last_seen[i]} to {n}")
            last_seen[i] = n

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(READERS)]
    for thread in threads:
        thread.start()
    try:
        for n in range(1, WRITES + 1):
            write(_content(n))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert path.read_text() == _content(WRITES)
    return sum(reads), problems


def test_token_directory_rewrites_are_atomic(tmp_path: Path, reliability_summary: Callable[
        ..., str]) -> None:
    directory = TokenDirectory(tmp_path / "tokens")
    audience = "https://sts.amazonaws.com"
    path = directory.file_for(audience)
    reads, problems = _hammer(path, lambda text: directory.write(audience, text))
    assert problems == []
    assert reads > 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.path.stat().st_mode) == 0o700
    assert sorted(os.listdir(directory.path)) == [path.name], "a temp file was left behind"
    reliability_summary("token-file atomicity (TokenDirectory.write)",
                        load=f"{WRITES} rewrites under {READERS} readers ({reads} reads)",
                        faults="concurrent rewrite", bad_inputs=0, failures=len(problems))


def test_write_private_file_rewrites_are_atomic(tmp_path: Path, reliability_summary: Callable[
        ..., str]) -> None:
    path = tmp_path / "credentials.json"
    reads, problems = _hammer(path, lambda text: write_private_file(path, text))
    assert problems == []
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == [path.name]
    reliability_summary("token-file atomicity (write_private_file)",
                        load=f"{WRITES} rewrites under {READERS} readers ({reads} reads)",
                        faults="concurrent rewrite", bad_inputs=0, failures=len(problems))
