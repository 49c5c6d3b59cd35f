"""4. Training overhead: a CPU PyTorch training loop (small MLP, fixed steps) with keyless
rolling credentials in the background vs the same loop without.

In the ``keyless`` runs, the training process runs a :class:`~keyless.delivery.TokenFileKeeper`
(4 s tokens from the dev issuer over loopback: a new token file about every 2 s, written
atomically) and a thread reading its AWS credentials every 100 ms (6 s sessions from the STS
front: a new STS exchange about every 3 s); the first token and credential are fetched before
the clock starts (their one-off cost is section 5's). Each run is a fresh subprocess; runs alternate
(baseline, keyless, ...) and the medians are compared. Throughput is counted per CPU-second
of the whole process (background threads included), which other load on a shared machine does
not move; the wall-clock figure is recorded too. Target: throughput ratio >= 0.99.

Also the child entry point: ``python -m benchmarks.training CONFIG MODE STEPS``.
"""

from __future__ import annotations

import json
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from keyless.devissuer import DevClient

from .common import Row
from .stack import AUDIENCE, Federation

__all__ = ["run", "train"]

SECTION = "4. training overhead"
LIMIT = 0.99


def train(steps: int) -> tuple[float, float]:
    """Steps per wall-clock second and per CPU second of the whole process (so the
    background threads' CPU counts against the run) of a small MLP on random data, one torch
    thread, after 20 warm-up steps."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    data, labels = torch.randn(64, 256), torch.randint(0, 10, (64,))
    loss_fn = torch.nn.CrossEntropyLoss()
    wall = cpu = 0.0
    for step in range(steps + 20):
        if step == 20:
            wall, cpu = time.perf_counter(), time.process_time()
        optimizer.zero_grad()
        loss_fn(model(data), labels).backward()
        optimizer.step()
    return steps / (time.perf_counter() - wall), steps / (time.process_time() - cpu)


def _child(config_path: str, mode: str, steps: int) -> None:
    stop = threading.Event()
    keeper = None
    reads = [0]
    if mode == "keyless":
        from keyless import Keyless
        from keyless.delivery import TokenDirectory, TokenFileKeeper

        identity = Keyless(json.loads(Path(config_path).read_text()))
        keeper = TokenFileKeeper(identity, TokenDirectory()).start()
        credentials: Any = identity.boto3_session().get_credentials()
        # the first credential before the clock starts: its one-off cost (botocore's STS
        # client, the service model) is section 5's; this section is the rolling overhead
        credentials.get_frozen_credentials()

        def reader() -> None:
            while not stop.wait(0.1):
                credentials.get_frozen_credentials()
                reads[0] += 1

        threading.Thread(target=reader, daemon=True).start()
    rate, cpu_rate = train(steps)
    stop.set()
    rotations = 0
    if keeper is not None:
        keeper.stop()
        rotations = keeper.rotations
        keeper.directory.cleanup()
    print(json.dumps({"rate": rate, "cpu_rate": cpu_rate, "rotations": rotations,
                      "reads": reads[0]}))


def run(fed: Federation, steps: int = 8000, pairs: int = 3) -> list[Row]:
    secret = secrets.token_urlsafe(24)
    fed.issuer.add_client(DevClient("roller", secret, subject="trainer", lifetime_seconds=4))
    config = fed.config(initial_backoff_seconds=0.2, max_backoff_seconds=1.0)
    config["source"].update(client_id="roller", client_secret=secret, audience=AUDIENCE)
    before = fed.aws.front.max_session_seconds
    fed.aws.front.max_session_seconds = 6
    rates: dict[str, list[float]] = {"baseline": [], "keyless": []}
    cpu_rates: dict[str, list[float]] = {"baseline": [], "keyless": []}
    rotations = sts_calls = 0
    try:
        with tempfile.TemporaryDirectory(prefix="keyless-bench-") as tmp:
            path = Path(tmp) / "config.json"
            path.write_text(json.dumps(config))
            path.chmod(0o600)
            for _ in range(pairs):
                for mode in ("baseline", "keyless"):
                    calls = fed.aws.front.calls
                    out = subprocess.run([sys.executable, "-m", "benchmarks.training", str(path),
                                          mode, str(steps)], capture_output=True, text=True,
                                         timeout=600, check=True)
                    data = json.loads(out.stdout.strip().splitlines()[-1])
                    rates[mode].append(data["rate"])
                    cpu_rates[mode].append(data["cpu_rate"])
                    if mode == "keyless":
                        rotations += data["rotations"]
                        sts_calls += fed.aws.front.calls - calls
    finally:
        fed.aws.front.max_session_seconds = before
    k, b = statistics.median(cpu_rates["keyless"]), statistics.median(cpu_rates["baseline"])
    kw, bw = statistics.median(rates["keyless"]), statistics.median(rates["baseline"])
    return [Row(SECTION, "training steps per CPU-second, background refresh on", k, b,
                "steps/CPU-s", k / b, f">= {LIMIT}", k / b >= LIMIT,
                f"{pairs} alternating runs of {steps} steps; keyless runs rolled {rotations} "
                f"token files and {sts_calls} STS sessions in all"),
            Row(SECTION, "training steps per wall-second (shared machine: noisy)", kw, bw,
                "steps/s", kw / bw, "recorded", None,
                "wall clock includes other load on the machine")]


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], int(sys.argv[3]))
