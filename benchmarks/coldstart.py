"""5. Cold start and footprint, each in fresh subprocesses (median of several runs):

- ``import keyless`` time (cloud SDKs are imported lazily: checked) vs ``import boto3``;
- time from process start to a first usable AWS credential against the loopback dev issuer
  and STS front: keyless (client credentials at the IdP, then AssumeRoleWithWebIdentity
  through botocore) vs plain boto3 web identity from a token file (no IdP call: the token is
  already on disk);
- resident memory that process holds at that point, less a bare interpreter's.

Targets: recorded, with the vendor equivalents.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import Row
from .stack import AUDIENCE, Federation

__all__ = ["run"]

SECTION = "5. cold start"
_RSS = ("def rss():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmRSS:'):\n"
        "            return int(line.split()[1]) / 1024\n")
_IMPORT = ("import sys, time\nt = time.perf_counter()\nimport {module}\n"
           "print(time.perf_counter() - t, sorted(m for m in ('boto3', 'botocore', 'google.auth',"
           " 'azure.identity', 'databricks.sdk', 'huggingface_hub', 'torch') if m in sys.modules))")
_BARE = "import json\n" + _RSS + "print(json.dumps({'rss': rss()}))"
_KEYLESS = ("import json, sys, time\n" + _RSS +
            "from keyless import Keyless\n"
            "config = json.load(open(sys.argv[1]))\n"
            "frozen = Keyless(config).boto3_session().get_credentials().get_frozen_credentials()\n"
            "assert frozen.access_key\n"
            "print(json.dumps({'done': time.time(), 'rss': rss()}))")
_BOTO3 = ("import json, time\n" + _RSS +
          "import boto3\n"
          "frozen = boto3.Session().get_credentials().get_frozen_credentials()\n"
          "assert frozen.access_key\n"
          "print(json.dumps({'done': time.time(), 'rss': rss()}))")


def _clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GOOGLE_"))}
    env.update(extra or {})
    return env


def _child(code: str, *args: str, env: dict[str, str] | None = None) -> tuple[float, str]:
    start = time.time()
    out = subprocess.run([sys.executable, "-c", code, *args], env=env or _clean_env(),
                         capture_output=True, text=True, timeout=120, check=True)
    return start, out.stdout.strip().splitlines()[-1]


def _median_import(module: str, runs: int = 5) -> tuple[float, str]:
    times, loaded = [], ""
    for _ in range(runs):
        _, line = _child(_IMPORT.format(module=module))
        seconds, _, loaded = line.partition(" ")
        times.append(float(seconds))
    return statistics.median(times), loaded


def _first_credential(code: str, args: list[str], env: dict[str, str],
                      runs: int = 3) -> tuple[float, float]:
    times, rss = [], []
    for _ in range(runs):
        start, line = _child(code, *args, env=env)
        data: dict[str, Any] = json.loads(line)
        times.append(data["done"] - start)
        rss.append(data["rss"])
    return statistics.median(times), statistics.median(rss)


def run(fed: Federation) -> list[Row]:
    rows: list[Row] = []
    keyless_import, loaded = _median_import("keyless")
    boto3_import, _ = _median_import("boto3")
    rows.append(Row(SECTION, "import time", keyless_import * 1000, boto3_import * 1000, "ms",
                    keyless_import / boto3_import, "recorded (SDKs lazy)", loaded == "[]",
                    f"vs import boto3; SDKs loaded by import keyless: {loaded}"))
    bare = statistics.median(json.loads(_child(_BARE)[1])["rss"] for _ in range(3))
    with tempfile.TemporaryDirectory(prefix="keyless-bench-") as tmp:
        config_path = Path(tmp) / "config.json"
        config_path.write_text(json.dumps(fed.config()))
        config_path.chmod(0o600)
        token_path = Path(tmp) / "token"
        token_path.write_text(fed.issuer.mint("trainer", AUDIENCE, lifetime=3600))
        token_path.chmod(0o600)
        aws_env = fed.aws.env()
        k_time, k_rss = _first_credential(_KEYLESS, [str(config_path)], _clean_env(aws_env))
        b_time, b_rss = _first_credential(_BOTO3, [], _clean_env({
            **aws_env, "AWS_WEB_IDENTITY_TOKEN_FILE": str(token_path),
            "AWS_ROLE_ARN": fed.role_arn, "AWS_ROLE_SESSION_NAME": "bench-boto3"}))
    rows.append(Row(SECTION, "process start to first AWS credential", k_time * 1000,
                    b_time * 1000, "ms", k_time / b_time, "recorded", None,
                    "keyless (IdP + STS) vs boto3 web identity (token file, STS only)"))
    rows.append(Row(SECTION, "resident memory added per worker", k_rss - bare, b_rss - bare,
                    "MiB", (k_rss - bare) / (b_rss - bare), "recorded", None,
                    f"RSS at first credential less a bare interpreter ({bare:.0f} MiB)"))
    return rows
