#!/usr/bin/env python3
"""The two commands of the README, on a fresh machine with Python >= 3.11, git and node/npm.

    python3 dev.py demo    run `keyless demo` (embedded default, no cloud account)
    python3 dev.py test    build the test environments and run the whole suite, including the
                           release step: the four distributions built (.envs/dist) and each
                           installed from its wheel beside its host (.envs/wheels), checked by
                           tests/release with the docs site (mkdocs build --strict)
    python3 dev.py bench   run the benchmarks (table + plot in benchmarks/results/)

Environments live in .envs/ (one per host: Airflow 3.3 and Prefect 3.9 cannot share one).
They are built with uv (bootstrapped with pip, which honours this machine's pip config);
PIP_FIND_LINKS is passed on to uv as UV_FIND_LINKS. Bytecode is compiled at install time.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
import tomllib
import venv
import xml.etree.ElementTree as ET
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent
ENVS = ROOT / ".envs"
# the npm fixtures the tests run: the reference OIDC provider (oidc-provider) and Azurite
NODE_FIXTURES = [ROOT / "tests" / "support" / "idp", ROOT / "tests" / "support" / "azurite"]

# name -> (requirements file, test paths run in that environment)
ENVIRONMENTS: dict[str, tuple[str, list[str]]] = {
    "core": ("tests/requirements/core.txt", ["tests/core", "tests/support", "tests/e2e",
                                              "tests/reliability"]),
    "airflow": ("tests/requirements/airflow.txt", ["tests/airflow_provider"]),
    "prefect": ("tests/requirements/prefect.txt", ["tests/prefect_blocks"]),
    "ray": ("tests/requirements/ray.txt", ["tests/ray_runtime"]),
    # the built distributions: metadata (twine), wheel contents, each installed alone beside its
    # host (.envs/wheels, made by build_release), the docs site (.envs/docs); no keyless here
    "release": ("tests/requirements/release.txt", ["tests/release"]),
}
#: extra pytest options per environment: the release env has no keyless, so the plugins of
#: tests/conftest.py are not loaded there
PYTEST_OPTIONS: dict[str, list[str]] = {"release": ["--confcutdir=tests/release"]}

# name -> requirements file, for environments that run a tool rather than tests (same stamps)
TOOL_ENVIRONMENTS: dict[str, str] = {
    "demo": "tests/requirements/demo.txt",
    "bench": "tests/requirements/bench.txt",
    "docs": "tests/requirements/docs.txt",  # mkdocs + material: `mkdocs build --strict`
}

# The release step (build_release): the four distributions built from what a clean clone holds,
# then installed from their wheels, each beside its host, as a user installs them.
DISTRIBUTIONS = ["core", "airflow_provider", "prefect_blocks", "ray_runtime"]
DIST = ENVS / "dist"
WHEELS = ENVS / "wheels"
#: .envs/wheels/NAME -> ({distribution dir: extras of its wheel}, the host installed beside it)
WHEEL_ENVIRONMENTS: dict[str, tuple[dict[str, str], list[str]]] = {
    "keyless": ({"core": "aws,demo"}, []),
    "airflow": ({"core": "", "airflow_provider": ""}, ["apache-airflow==3.3.*"]),
    "prefect": ({"core": "", "prefect_blocks": ""}, ["prefect==3.9.*"]),
    "ray": ({"core": "", "ray_runtime": ""}, ["ray==2.60.*"]),
}


def log(message: str) -> None:
    print(f"[dev] {message}", flush=True)


def run(cmd: list[str], **kwargs: object) -> None:
    subprocess.run(cmd, check=True, **kwargs)  # type: ignore[call-overload]


def bin_path(env: Path, name: str) -> Path:
    return env / "bin" / name


def uv() -> Path:
    """A uv binary in .envs/tools, installed with this machine's pip (and its config)."""
    tools = ENVS / "tools"
    exe = bin_path(tools, "uv")
    if not exe.exists():
        log("bootstrapping uv into .envs/tools")
        venv.EnvBuilder(with_pip=True, clear=True).create(tools)
        run([str(bin_path(tools, "python")), "-m", "pip", "install", "--quiet", "uv>=0.4"])
    return exe


def uv_environ() -> dict[str, str]:
    env = dict(os.environ)
    if env.get("PIP_FIND_LINKS") and not env.get("UV_FIND_LINKS"):
        env["UV_FIND_LINKS"] = env["PIP_FIND_LINKS"]
    env["UV_COMPILE_BYTECODE"] = "1"
    env.setdefault("UV_LINK_MODE", "copy")
    return env


def stamp_of(*files: Path) -> str:
    digest = hashlib.sha256(sys.version.encode())
    for file in files:
        digest.update(file.read_bytes())
    return digest.hexdigest()


def ensure_env(name: str) -> Path:
    """Create or update .envs/NAME from its requirements file (skipped when unchanged)."""
    requirements = ROOT / (ENVIRONMENTS[name][0] if name in ENVIRONMENTS
                           else TOOL_ENVIRONMENTS[name])
    env_dir = ENVS / name
    stamp_file = env_dir / ".keyless-stamp"
    inputs = [requirements, *sorted(ROOT.glob("*/pyproject.toml"))]
    stamp = stamp_of(*inputs)
    if stamp_file.exists() and stamp_file.read_text() == stamp:
        return env_dir
    log(f"building environment .envs/{name}")
    uv_bin = str(uv())
    environ = uv_environ()
    if not bin_path(env_dir, "python").exists():
        run([uv_bin, "venv", "--quiet", "--python", sys.executable, str(env_dir)], env=environ)
    environ["VIRTUAL_ENV"] = str(env_dir)
    run([uv_bin, "pip", "install", "--quiet", "-r", str(requirements)], cwd=ROOT, env=environ)
    stamp_file.write_text(stamp)
    return env_dir


def ensure_node_fixtures() -> None:
    """npm ci for the node fixtures the tests run (oidc-provider, Azurite), each once per lock."""
    for fixture in NODE_FIXTURES:
        lock = fixture / "package-lock.json"
        if not lock.exists():
            continue
        stamp_file = fixture / "node_modules" / ".keyless-stamp"
        stamp = stamp_of(lock)
        if stamp_file.exists() and stamp_file.read_text() == stamp:
            continue
        npm = shutil.which("npm")
        if npm is None:
            sys.exit("[dev] npm is needed for the test fixtures (oidc-provider, Azurite): "
                     "install node/npm")
        log(f"installing the node fixture {fixture.name} (npm ci)")
        run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=fixture)
        stamp_file.write_text(stamp)


def ensure_chromium() -> None:
    """Debian's chromium for the browser tests (the audit timeline, tests/e2e/test_audit_browser.py;
    the Airflow connection form and the Prefect block form through Playwright, which never
    downloads a browser: tests/support/browser.py): installed with apt-get only when
    /usr/bin/chromium is missing and we are root; otherwise those tests skip and say why."""
    if Path("/usr/bin/chromium").exists():
        return
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("apt-get") is None:
        log("chromium missing and not root with apt-get: the browser tests will skip")
        return
    log("installing Debian's chromium (apt-get) for the browser tests")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    ok = subprocess.run(["apt-get", "update", "-qq"], env=env).returncode == 0 and \
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env).returncode == 0
    if not ok:
        log("apt-get could not install chromium: the browser tests will skip")


# host environment -> the package (and examples) `mypy --strict` checks there
HOST_TYPECHECK: dict[str, list[str]] = {
    "airflow": ["airflow_provider/src/keyless_airflow", "examples/airflow/keyless_dags.py",
                "examples/airflow/keyless_train.py", "examples/airflow/keyless_torchrun.py"],
    "prefect": ["prefect_blocks/src/prefect_keyless"],
    "ray": ["ray_runtime/src/keyless_ray", "examples/github-actions/train_ci.py",
            "examples/ray/train_job.py", "examples/ray/local_train.py",
            "examples/torchrun/train_shards.py"],
}
LINTED = ["core", "tests", "dev.py", "airflow_provider", "prefect_blocks", "ray_runtime",
          "examples", "benchmarks", "docs"]


def lint(envs: dict[str, Path], out: IO[str]) -> bool:
    """ruff over the tree; mypy --strict on keyless (core env) and on each host package in
    its own environment (it imports its host). Output to ``out``."""
    core = envs["core"]

    def check(title: str, cmd: list[str], environ: dict[str, str] | None = None) -> bool:
        out.write(f"[dev] {title}\n")
        out.flush()
        return subprocess.run(cmd, cwd=ROOT, env=environ, stdout=out,
                              stderr=subprocess.STDOUT).returncode == 0

    paths = [p for p in LINTED if (ROOT / p).exists()]
    ok = check("ruff check", [str(bin_path(core, "ruff")), "check", "--quiet", *paths])
    ok &= check("mypy --strict (keyless)", [str(bin_path(core, "mypy")), "--cache-dir",
                                            str(ENVS / ".mypy_cache")])
    ok &= check("mypy --strict (benchmarks)", [str(bin_path(core, "mypy")), "--strict",
                                               "--cache-dir", str(ENVS / ".mypy_cache"),
                                               "benchmarks"])
    for name, targets in HOST_TYPECHECK.items():
        if name in envs:
            ok &= check(f"mypy --strict ({name})",
                        [str(bin_path(envs[name], "python")), "-m", "mypy", "--strict",
                         "--cache-dir", str(ENVS / f".mypy_cache_{name}"), *targets],
                        dict(os.environ, MYPYPATH=str(ROOT / "core" / "src")))
    return ok


def source_files(directory: str) -> list[str]:
    """The files of ``directory`` a clean clone has (tracked or new, not ignored), relative to
    ROOT: no egg-info, build/ or __pycache__ left by editable installs reaches a build."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard", "--", directory], cwd=ROOT, check=True,
                            capture_output=True).stdout.decode()
    return sorted(name for name in listed.split("\0") if name and (ROOT / name).is_file())


def build_distributions(files: list[str], uv_bin: str, environ: dict[str, str]) -> dict[str, Path]:
    """Build each distribution's sdist, then its wheel from that sdist, into .envs/dist from a
    copy of its clean-clone ``files`` (the source tree is never written to); its wheel by
    distribution directory."""
    shutil.rmtree(DIST, ignore_errors=True)
    for name in files:
        (DIST / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / name, DIST / "src" / name)
    wheels = {}
    for directory in DISTRIBUTIONS:
        run([uv_bin, "build", "--quiet", "--python", sys.executable, "--out-dir", str(DIST),
             str(DIST / "src" / directory)], env=environ)
        project = tomllib.loads((ROOT / directory / "pyproject.toml").read_text())
        [wheels[directory]] = DIST.glob(f"{project['project']['name'].replace('-', '_')}-*.whl")
    return wheels


def wheel_environment(name: str, wheels: list[tuple[Path, str]], host: list[str],
                      uv_bin: str, environ: dict[str, str]) -> None:
    """.envs/wheels/NAME: ``wheels`` (file, extras) installed beside ``host`` from the package
    index, as a user installs them. Made fresh whenever what it installs could resolve
    differently (the wheels' requirements, the host, Python); otherwise only the wheels are
    reinstalled into it (their dependencies are the ones it holds)."""
    env_dir, digest = WHEELS / name, hashlib.sha256(f"{sys.version}{host}".encode())
    for wheel, extras in wheels:
        with zipfile.ZipFile(wheel) as archive:
            [metadata] = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
            requires = [line for line in archive.read(metadata).decode().splitlines()
                        if line.startswith(("Requires-Dist:", "Provides-Extra:"))]
        digest.update(f"{wheel.name.split('-')[0]}[{extras}]{requires}".encode())
    stamp_file, python = env_dir / ".keyless-stamp", bin_path(env_dir, "python")
    environ = dict(environ, UV_LINK_MODE="hardlink")  # these envs only run: no copy needed
    if stamp_file.exists() and stamp_file.read_text() == digest.hexdigest():
        run([uv_bin, "pip", "install", "--quiet", "--python", str(python), "--no-deps",
             "--reinstall", *(str(wheel) for wheel, _ in wheels)], env=environ)
        return
    shutil.rmtree(env_dir, ignore_errors=True)
    run([uv_bin, "venv", "--quiet", "--python", sys.executable, str(env_dir)], env=environ)
    requirements = [f"{wheel.name.split('-')[0]}{f'[{extras}]' if extras else ''} @ "
                    f"{wheel.as_uri()}" for wheel, extras in wheels]
    run([uv_bin, "pip", "install", "--quiet", "--python", str(python), *requirements, *host],
        env=environ)
    stamp_file.write_text(digest.hexdigest())


def build_release() -> bool:
    """The release step of the test command: build_distributions, then the wheel_environment
    of each WHEEL_ENVIRONMENTS entry; tests/release checks the result. Skipped when the
    distributions' files and the plan are unchanged (a stamp, like the environments). False
    if a build or an install failed: then no archive is left to pass those tests."""
    files = [name for directory in DISTRIBUTIONS for name in source_files(directory)]
    digest = hashlib.sha256(f"{sys.version}{WHEEL_ENVIRONMENTS}".encode())
    for name in files:
        digest.update(name.encode() + b"\0" + (ROOT / name).read_bytes())
    stamp, stamp_file = digest.hexdigest(), WHEELS / ".keyless-stamp"
    if stamp_file.exists() and stamp_file.read_text() == stamp:
        return True
    log("building the distributions (.envs/dist) and their wheel environments (.envs/wheels)")
    stamp_file.unlink(missing_ok=True)
    uv_bin, environ = str(uv()), uv_environ()
    try:
        wheels = build_distributions(files, uv_bin, environ)
        for name, (installs, host) in WHEEL_ENVIRONMENTS.items():
            wheel_environment(name, [(wheels[d], extras) for d, extras in installs.items()],
                              host, uv_bin, environ)
    except (subprocess.CalledProcessError, ValueError) as failed:
        log(f"release build failed: {failed}")
        shutil.rmtree(DIST, ignore_errors=True)
        return False
    stamp_file.write_text(stamp)
    return True


def pytest(env: Path, name: str, paths: list[str], out: IO[str]) -> tuple[int, dict[str, int]]:
    """Run ``paths`` in ``env`` (output to ``out``); the exit status and the junit counts."""
    report = ENVS / f"junit-{name}.xml"
    report.unlink(missing_ok=True)
    existing = [p for p in paths if (ROOT / p).exists()]
    out.write(f"[dev] pytest in .envs/{name}: {' '.join(existing)}\n")
    out.flush()
    code = subprocess.run([str(bin_path(env, "python")), "-m", "pytest", *existing,
                           *PYTEST_OPTIONS.get(name, []), f"--junitxml={report}"],
                          cwd=ROOT, stdout=out, stderr=subprocess.STDOUT).returncode
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    if report.exists():
        root = ET.parse(report).getroot()  # noqa: S314 - our own report
        for suite in root.iter("testsuite"):
            tests = int(suite.get("tests", 0))
            failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
            skipped = int(suite.get("skipped", 0))
            counts["failed"] += failed
            counts["skipped"] += skipped
            counts["passed"] += tests - failed - skipped
    return code, counts


#: The stages of the test command in two lanes that run side by side (2 cores; the suite's
#: budget is 30 minutes), balanced by their time alone (core ~10 min, Ray ~7, Airflow ~6,
#: Prefect ~3, lint ~2): core, Prefect, release | lint, Airflow, Ray (one Ray cluster at a
#: time: only the Ray stage starts one). Each stage's output goes to .envs/logs/STAGE.log and is
#: printed whole when the stage ends. KEYLESS_TEST_SERIAL=1 runs them one after another.
LANES = [["core", "prefect", "release"], ["lint", "airflow", "ray"]]
_print_lock = threading.Lock()


def run_stage(name: str, envs: dict[str, Path]) -> tuple[int, dict[str, int]]:
    """One stage of LANES: lint (exit 1 if it failed) or a pytest environment."""
    logs = ENVS / "logs"
    logs.mkdir(exist_ok=True)
    started = time.monotonic()
    counts: dict[str, int] = {}
    with (logs / f"{name}.log").open("w+") as out:
        if name == "lint":
            code = 0 if lint(envs, out) else 1
        else:
            code, counts = pytest(envs[name], name, ENVIRONMENTS[name][1], out)
        out.seek(0)
        with _print_lock:
            print(f"[dev] ======== {name}: exit {code} in {time.monotonic() - started:.0f} s "
                  "========", flush=True)
            shutil.copyfileobj(out, sys.stdout)
            sys.stdout.flush()
    return code, counts


def run_lanes(envs: dict[str, Path]) -> dict[str, tuple[int, dict[str, int]]]:
    """Every stage of LANES, the lanes side by side; results by stage name."""
    results: dict[str, tuple[int, dict[str, int]]] = {}
    staged = [stage for stages in LANES for stage in stages]
    if sorted(staged) != sorted([*ENVIRONMENTS, "lint"]):
        raise SystemExit(f"[dev] LANES must hold lint and each of ENVIRONMENTS once: {staged}")

    def lane(stages: list[str]) -> None:
        for stage in stages:
            results[stage] = run_stage(stage, envs)

    if os.environ.get("KEYLESS_TEST_SERIAL") == "1":
        lane(staged)
        return results
    with ThreadPoolExecutor(len(LANES)) as pool:
        for done in [pool.submit(lane, stages) for stages in LANES]:
            done.result()
    return results


def cmd_test() -> int:
    ensure_node_fixtures()
    ensure_chromium()
    uv()  # once, before the environments are built side by side
    names = [*ENVIRONMENTS, "docs"]
    with ThreadPoolExecutor(3) as pool:
        built = dict(zip(names, pool.map(ensure_env, names), strict=True))
    envs = {name: built[name] for name in ENVIRONMENTS}
    started = time.monotonic()
    release_ok = build_release()
    log(f"release build: {time.monotonic() - started:.0f} s")
    started = time.monotonic()
    results = run_lanes(envs)
    totals = {"passed": 0, "failed": 0, "skipped": 0}
    worst = 0
    for name, (code, counts) in results.items():
        worst = max(worst, code)
        for key, value in counts.items():
            totals[key] += value
        if name == "lint" and code:
            log("lint failed (ruff or mypy): see the lint stage above")
    if not release_ok:
        log("release build failed (uv build or a wheel environment): see above")
        worst = max(worst, 1)
    log(f"stages: {time.monotonic() - started:.0f} s")
    print(f"total: {totals['passed']} passed, {totals['failed']} failed, "
          f"{totals['skipped']} skipped", flush=True)
    return worst


def cmd_demo() -> int:
    """`keyless demo` from its own environment (.envs/demo: keyless[aws,demo] only, so the
    demo proves that a plain install is enough)."""
    env = ensure_env("demo")
    return subprocess.run([str(bin_path(env, "keyless")), "demo"], cwd=ROOT).returncode


def cmd_bench() -> int:
    """benchmarks/run.py in .envs/bench (keyless + boto3, google-auth, moto, CPU torch,
    matplotlib): prints the table and writes benchmarks/results/ (markdown + PNG)."""
    env = ensure_env("bench")
    return subprocess.run([str(bin_path(env, "python")), "-m", "benchmarks.run"],
                          cwd=ROOT).returncode


def main() -> int:
    commands = {"test": cmd_test, "demo": cmd_demo, "bench": cmd_bench}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    return commands[sys.argv[1]]()


if __name__ == "__main__":
    sys.exit(main())
