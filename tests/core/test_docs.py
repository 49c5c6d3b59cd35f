"""The documentation stays true: README.md and docs/ are checked against the code.

1. ``docs/reference/config.md`` equals what ``docs/generate_config_reference.py`` renders from
   ``keyless.config_json_schema()`` (stale: run ``python docs/generate_config_reference.py``);
2. every ``sh`` fenced command line that is ``keyless schema``, ``keyless --help`` or
   ``keyless <cmd> --help`` runs with exit status 0 (so documented commands exist);
3. every ``yaml`` fenced block with top-level ``source:`` and ``target:`` loads with
   :func:`keyless.load_config` (documented configs are valid);
4. every relative link in README.md, docs/, examples/, SECURITY.md, CHANGELOG.md and the
   distributions' READMEs (:data:`LINK_PAGES`) points to a file inside the repository that
   exists, and a ``#anchor`` into a Markdown page names one of its headings; every external
   link is https to the public docs of a project keyless builds on (:data:`PUBLIC_DOCS`);
5. every shell command line in README.md, docs/ and examples/**/README.md is exercised: a
   ``keyless`` line either is one of 2. or is run here for real (:data:`LOCAL_RUNS`: the dev
   issuer, moto behind the verifying STS front, the example configs pointed at them, in a temp
   dir that is the working directory); any other line matches :data:`NOT_RUN_HERE`, an
   allow-list whose every entry says why it is not run here and, where another test runs the
   same thing, names that test (which must exist and mention it). A page whose commands a
   dedicated test follows (:data:`PAGES_RUN_BY`) is left to that test. A line covered by
   none of these fails, and so does an entry that no documented line needs any more.
6. ``docs/troubleshooting.md`` has one row per ``keyless doctor`` check, in the report's order.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from keyless import load_config
from keyless.dev.issuer import DevIssuer
from tests.core.example_fixtures import (
    EXAMPLES,
    allow_audiences,
    install_trust_policy,
    local_config,
)

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = sorted([ROOT / "README.md", *DOCS.glob("**/*.md")])
#: Pages whose shell commands are checked (5.): the docs and the examples' READMEs.
COMMAND_PAGES = sorted([*PAGES, *EXAMPLES.glob("**/README.md")])
#: Pages whose links are checked (4.): the docs, the examples' pages, the release's files and
#: each distribution's README (its long description on the package index).
LINK_PAGES = sorted({*PAGES, *EXAMPLES.glob("**/*.md"), ROOT / "SECURITY.md",
                     ROOT / "CHANGELOG.md", *(ROOT / d / "README.md" for d in
                                              ("core", "airflow_provider", "prefect_blocks",
                                               "ray_runtime"))})
#: Hosts an external link may point to: the public documentation of the projects keyless
#: builds on (never a private host, a file outside the repository or a placeholder).
PUBLIC_DOCS = frozenset({
    "airflow.apache.org", "docs.prefect.io", "docs.ray.io", "pytorch.org", "docs.pytorch.org",
    "docs.aws.amazon.com", "cloud.google.com", "learn.microsoft.com", "docs.databricks.com",
    "huggingface.co", "docs.github.com", "docs.gitlab.com", "spiffe.io", "openid.net",
    "datatracker.ietf.org", "www.rfc-editor.org", "docs.astral.sh", "packaging.python.org",
    "keepachangelog.com", "semver.org", "www.apache.org", "mlflow.org", "opentelemetry.io",
    "kubernetes.io", "docs.kuberay.io", "developer.hashicorp.com", "registry.terraform.io",
})
SHELL = ("sh", "shell", "bash", "console")
KEYLESS = str(Path(sys.executable).with_name("keyless"))

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```",
                    re.MULTILINE | re.DOTALL)
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\((?P<target>[^)\s]+)\)")


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_config_reference",
                                                  DOCS / "generate_config_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _blocks(*langs: str, pages: list[Path] = PAGES) -> list[tuple[str, str]]:
    """(where, dedented body) of every fenced block of one of ``langs`` in ``pages``."""
    found = []
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for match in _FENCE.finditer(text):
            if match["lang"] in langs:
                line = text.count("\n", 0, match.start()) + 1
                found.append((f"{page.relative_to(ROOT)}:{line}",
                              textwrap.dedent(match["body"])))
    return found


def _command_lines(body: str) -> list[str]:
    return [line for line in body.replace("\\\n", " ").splitlines() if line.strip()]


def _runnable(line: str) -> list[str] | None:
    """The argv of a ``keyless schema`` / ``keyless --help`` / ``keyless CMD --help`` line."""
    try:
        argv = shlex.split(line, comments=True)
    except ValueError:
        return None
    if argv in (["keyless", "schema"], ["keyless", "--help"]):
        return argv
    if len(argv) == 3 and argv[0] == "keyless" and argv[2] == "--help":
        return argv
    return None


COMMANDS = [(where, argv) for where, body in _blocks(*SHELL, pages=COMMAND_PAGES)
            for line in _command_lines(body) if (argv := _runnable(line)) is not None]
CONFIGS = [(where, body) for where, body in _blocks("yaml")
           if isinstance(doc := yaml.safe_load(body), dict) and "source" in doc and "target" in doc]


def test_config_reference_is_current() -> None:
    generated = _generator().render()
    written = (DOCS / "reference" / "config.md").read_text(encoding="utf-8")
    assert generated == written, ("docs/reference/config.md is stale; fix: run "
                                  "`python docs/generate_config_reference.py`")


def test_config_reference_is_deterministic_and_complete() -> None:
    generator = _generator()
    page = generator.render()
    assert page == generator.render()
    for heading in ("### source: file", "### source: client_credentials", "### target: aws",
                    "### target: gcp", "### target: azure", "### target: databricks",
                    "### target: huggingface", "### target: oauth2", "## refresh", "## audit"):
        assert heading in page.splitlines(), heading
    secret_rows = [row for row in page.splitlines() if "**secret**" in row and row.startswith("|")]
    assert sorted({row.split("`")[1] for row in secret_rows}) == ["client_secret", "private_key"]


def test_docs_have_commands_and_configs_to_check() -> None:
    assert len(COMMANDS) >= 3, COMMANDS
    assert len(CONFIGS) >= 8, [where for where, _ in CONFIGS]


@pytest.mark.parametrize(("where", "argv"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_documented_command_runs(where: str, argv: list[str]) -> None:
    done = subprocess.run([KEYLESS, *argv[1:]], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, f"{where}: `{' '.join(argv)}` exited {done.returncode}: " \
                                 f"{done.stderr[-2000:]}"
    assert done.stdout.strip(), f"{where}: `{' '.join(argv)}` printed nothing"


@pytest.mark.parametrize(("where", "body"), CONFIGS, ids=[w for w, _ in CONFIGS])
def test_documented_config_loads(where: str, body: str) -> None:
    load_config(yaml.safe_load(body))


def _slug(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    return {_slug(m[1]) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", text, re.MULTILINE)}


def _all_links() -> list[tuple[str, str]]:
    """(page, target) of every Markdown link and autolink outside code in :data:`LINK_PAGES`."""
    found = []
    for page in LINK_PAGES:
        text = _FENCE.sub("", page.read_text(encoding="utf-8"))
        targets = [m["target"] for m in _LINK.finditer(text)] + _AUTOLINK.findall(text)
        found += [(str(page.relative_to(ROOT)), target) for target in targets]
    return found


_AUTOLINK = re.compile(r"<([a-z][a-z0-9+.-]*:[^>\s]+)>")
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:")  # https:, mailto:, ...


def _links() -> list[tuple[str, str]]:
    return [(page, target) for page, target in _all_links() if not _SCHEME.match(target)]


def _external_links() -> list[tuple[str, str]]:
    return [(page, target) for page, target in _all_links() if _SCHEME.match(target)]


def test_troubleshooting_has_a_row_for_every_doctor_check_in_order() -> None:
    from keyless.verify.doctor import CHECK_NAMES

    page = (DOCS / "troubleshooting.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([a-z_]+)` \|", page, flags=re.MULTILINE)
    assert tuple(rows) == CHECK_NAMES, ("docs/troubleshooting.md's check table and "
                                        "keyless.doctor.CHECK_NAMES differ; fix the table")


LINKS = _links()


def test_docs_have_links_to_check() -> None:
    assert len(LINKS) >= 10, LINKS
    linked = {page for page, _ in LINKS}
    assert {"SECURITY.md", "CHANGELOG.md", "core/README.md", "ray_runtime/README.md"} <= linked


EXTERNAL_LINKS = _external_links()


@pytest.mark.parametrize(("page", "target"), EXTERNAL_LINKS,
                         ids=[f"{p}->{t}" for p, t in EXTERNAL_LINKS])
def test_external_link_is_public_upstream_docs(page: str, target: str) -> None:
    url = urlsplit(target)
    assert url.scheme == "https" and url.hostname in PUBLIC_DOCS, (
        f"{page}: link {target!r} is not https to the public docs of a project keyless builds "
        "on (PUBLIC_DOCS); link in-repo docs or the upstream project's documentation")


@pytest.mark.parametrize(("page", "target"), LINKS, ids=[f"{p}->{t}" for p, t in LINKS])
def test_relative_link_resolves(page: str, target: str) -> None:
    path, _, anchor = target.partition("#")
    destination = (ROOT / page).parent / path if path else ROOT / page
    assert destination.resolve().is_relative_to(ROOT), \
        f"{page}: link {target!r} leaves the repository; link the in-repo docs instead"
    assert destination.exists(), f"{page}: link {target!r}: {destination} does not exist"
    if anchor and destination.suffix == ".md":
        assert anchor in _anchors(destination), \
            f"{page}: link {target!r}: no heading with anchor #{anchor} in {path or page}"


# ----------------------------------------------------------------------------- 5. commands
def _documented_lines() -> list[tuple[str, str, str]]:
    """(page, where, line) of every shell command line; ``line`` is its words joined by one
    space, the trailing comment dropped (continuation lines joined)."""
    found = []
    for page in COMMAND_PAGES:
        name = str(page.relative_to(ROOT))
        for where, body in _blocks(*SHELL, pages=[page]):
            for raw in _command_lines(body):
                try:
                    words = shlex.split(raw, comments=True)
                except ValueError:
                    words = raw.split()
                if words:
                    found.append((name, where, " ".join(words)))
    return found


@dataclass(frozen=True)
class NotRunHere:
    """Documented lines (``pattern``, a regex on the line) this suite does not run, and why;
    ``evidence``: (test file, text it holds) where another test runs the same thing."""

    pattern: str
    reason: str
    evidence: tuple[str, str] | None = None


NOT_RUN_HERE: tuple[NotRunHere, ...] = (
    NotRunHere(r"^(aws|gcloud|az) ",
               "changes a cloud account (IAM OIDC provider and role, workload identity pool, "
               "Entra federated credential); the documents they install are checked against "
               "the keyless configs and a verifying STS",
               ("tests/core/test_examples_terraform.py", "trust-policy.json")),
    NotRunHere(r"^pip install ",
               "installs published distributions from PyPI; the release step of dev.py builds "
               "the same distributions' wheels here and installs each alone beside its host",
               ("tests/release/test_release_installed.py", "airflow-provider-keyless")),
    NotRunHere(r"^export RAY_RUNTIME_ENV_PLUGINS=",
               "configures the shell that starts a Ray node; the Ray tests start their nodes "
               "with it", ("tests/ray_runtime/conftest.py", "RAY_RUNTIME_ENV_PLUGINS")),
    NotRunHere(r"^python3 dev\.py demo$",
               "the demo takes minutes; the same `keyless demo` runs as a subprocess, judged "
               "line by line", ("tests/e2e/test_demo.py", '"demo"')),
    NotRunHere(r"^python3 dev\.py test$", "the whole suite: it is what CI runs"),
    NotRunHere(r"^airflow connections import examples/airflow/connections\.json$",
               "needs the Airflow environment and a metadata database; the example "
               "connections are parsed into keyless configs",
               ("tests/airflow_provider/test_airflow_fields.py", "connections.json")),
    NotRunHere(r"^cd examples/airflow && python keyless_dags\.py keyless_s3$",
               "needs the Airflow environment; every example DAG runs this way",
               ("tests/airflow_provider/test_airflow_dags.py", "keyless_dags.py")),
    NotRunHere(r"^cd examples/airflow && python keyless_train\.py$",
               "needs the Airflow environment and torch; the training DAG runs this way",
               ("tests/airflow_provider/test_airflow_dags.py", "keyless_train.py")),
    NotRunHere(r"^cd examples/airflow && python keyless_torchrun\.py$",
               "needs the Airflow environment and torch; the torchrun DAG runs this way",
               ("tests/airflow_provider/test_airflow_dags.py", "keyless_torchrun.py")),
    NotRunHere(r"^airflow dags test keyless_s3$",
               "needs the Airflow environment; the same DAG runs through dag.test()",
               ("tests/airflow_provider/test_airflow_dags.py", "dag.test()")),
    NotRunHere(r"^prefect block register -m prefect_keyless$",
               "needs the Prefect environment and a server",
               ("tests/prefect_blocks/test_prefect_block.py", '"register", "-m"')),
    NotRunHere(r"^python examples/prefect/keyless_flow\.py ",
               "needs the Prefect environment; the example flow runs against moto",
               ("tests/prefect_blocks/test_prefect_flows.py", "examples.prefect.keyless_flow")),
    NotRunHere(r"^python examples/prefect/keyless_torchrun\.py ",
               "needs the Prefect environment and torch; the torchrun flow runs against moto",
               ("tests/prefect_blocks/test_prefect_flows.py",
                "examples.prefect.keyless_torchrun")),
    NotRunHere(r"^ray job submit ",
               "needs the Ray environment and a cluster (one at a time on this machine)",
               ("tests/ray_runtime/test_ray_job_submit.py", '"job", "submit"')),
)

#: Pages whose shell blocks a dedicated test follows as a user would, line by line. If that
#: test is missing, the page's lines fall back to the rules above.
PAGES_RUN_BY = {"docs/quickstart-ray.md": "tests/ray_runtime/test_ray_quickstart.py"}

AWS_EXAMPLE = EXAMPLES / "aws"
_EKS_HOST = "oidc.eks.us-east-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE"


@dataclass(frozen=True)
class LocalRun:
    """How a documented ``keyless`` line runs here. ``setup(cwd, dev_issuer, aws_stack)``
    makes the files the docs assume (relative to ``cwd``) and the AWS side; ``replace`` swaps
    words of the line (a placeholder issuer for the local one); ``tail`` replaces what follows
    ``--`` (a command this environment lacks, by one that proves the credentials work);
    ``append`` adds flags a local run needs. The run must exit 0 and print ``expect``."""

    setup: Callable[[Path, DevIssuer, Any], None]
    expect: str
    replace: dict[str, str] = field(default_factory=dict)
    tail: tuple[str, ...] = ()
    append: tuple[str, ...] = ()


def _aws_example(config_path: str) -> Callable[[Path, DevIssuer, Any], None]:
    """examples/aws on this machine: its trust policy on its role (issuer host swapped for
    the dev issuer's), a projected-token stand-in minted for the trusted sub and aud, and
    its spec.yaml copied to ``config_path`` reading that token."""
    def setup(cwd: Path, dev_issuer: DevIssuer, aws_stack: Any) -> None:
        trust = json.loads((AWS_EXAMPLE / "trust-policy.json").read_text())
        allow_audiences(aws_stack, dev_issuer.issuer, ["sts.amazonaws.com"])
        install_trust_policy(aws_stack, "ml-training", trust, _EKS_HOST, dev_issuer.issuer)
        token = cwd / "projected-token"
        token.write_text(dev_issuer.mint("system:serviceaccount:ml:trainer",
                                         "sts.amazonaws.com"))
        local_config(AWS_EXAMPLE / "spec.yaml", cwd / config_path, token)
    return setup


def _token_file(cwd: Path, dev_issuer: DevIssuer, _aws_stack: Any) -> None:
    (cwd / "token.jwt").write_text(dev_issuer.mint("system:serviceaccount:ml:trainer",
                                                   "sts.amazonaws.com"))


_CALLER = ("import boto3; print(boto3.client('sts').get_caller_identity()['Arn'])")

LOCAL_RUNS: dict[str, LocalRun] = {
    "keyless doctor --config spec.yaml": LocalRun(
        _aws_example("spec.yaml"), "doctor: all checks passed"),
    "keyless doctor --config examples/aws/spec.yaml": LocalRun(
        _aws_example("examples/aws/spec.yaml"), "doctor: all checks passed"),
    "keyless doctor --token-file token.jwt --issuer https://oidc.example.com --audience "
    "sts.amazonaws.com": LocalRun(
        _token_file, "doctor: all checks passed",
        replace={"https://oidc.example.com": "{issuer}"}, append=("--allow-insecure-http",)),
    "keyless exec --config examples/aws/spec.yaml -- torchrun --nproc-per-node 2 train.py":
    LocalRun(  # real torchrun, each rank printing the session it got: its own
        _aws_example("examples/aws/spec.yaml"), ":assumed-role/ml-training/train-r1",
        tail=(sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
              "--no-python", sys.executable, "-c", _CALLER)),
}


def _covered_by_page_test(page: str) -> str | None:
    owner = PAGES_RUN_BY.get(page)
    return owner if owner is not None and (ROOT / owner).is_file() else None


DOCUMENTED = _documented_lines()


def test_docs_have_shell_commands_to_check() -> None:
    assert len(DOCUMENTED) >= 20, DOCUMENTED
    assert sum(line.startswith("keyless ") for _, _, line in DOCUMENTED) >= 8


@pytest.mark.parametrize(("page", "where", "line"), DOCUMENTED,
                         ids=[f"{w}:{line[:40]}" for _, w, line in DOCUMENTED])
def test_documented_command_is_exercised(page: str, where: str, line: str) -> None:
    if _covered_by_page_test(page):
        return  # that test runs the page's blocks as written (see PAGES_RUN_BY)
    argv = line.split(" ")
    if _runnable(line) is not None or line in LOCAL_RUNS:
        return  # run by test_documented_command_runs / test_local_run
    rules = [rule for rule in NOT_RUN_HERE if re.search(rule.pattern, line)]
    assert not (rules and argv[0] == "keyless"), \
        f"{where}: `{line}`: a keyless command must run here (LOCAL_RUNS), not be allow-listed"
    assert rules, (f"{where}: `{line}` is not exercised by any test; fix: run it in "
                   "LOCAL_RUNS (tests/core/test_docs.py) against the local fixtures, or add a "
                   "NotRunHere entry saying why it cannot run here")


@pytest.mark.parametrize("rule", NOT_RUN_HERE, ids=[r.pattern for r in NOT_RUN_HERE])
def test_not_run_here_entry_is_needed_and_true(rule: NotRunHere) -> None:
    # (lines of a PAGES_RUN_BY page count: the entry is their fallback)
    assert any(re.search(rule.pattern, line) for _, _, line in DOCUMENTED), \
        f"no documented line needs the allow-list entry {rule.pattern!r} any more: remove it"
    assert len(rule.reason.split()) >= 5
    if rule.evidence is not None:
        path, text = rule.evidence
        assert (ROOT / path).is_file(), f"{rule.pattern}: the evidence {path} does not exist"
        assert text in (ROOT / path).read_text(encoding="utf-8"), \
            f"{rule.pattern}: {path} no longer mentions {text!r}"


@pytest.mark.parametrize("line", sorted(LOCAL_RUNS))
def test_local_run(line: str, tmp_path: Path, dev_issuer: DevIssuer, aws_stack: Any) -> None:
    assert line in {documented for _, _, documented in DOCUMENTED}, \
        f"`{line}` is in LOCAL_RUNS but no page documents it any more: remove or update it"
    run = LOCAL_RUNS[line]
    run.setup(tmp_path, dev_issuer, aws_stack)
    argv = [run.replace.get(word, word).format(issuer=dev_issuer.issuer)
            for word in line.split(" ")]
    if run.tail:
        argv = argv[:argv.index("--") + 1] + list(run.tail)
    argv = [KEYLESS, *argv[1:], *run.append]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
           **aws_stack.env()}
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, f"`{line}` exited {done.returncode}:\n{done.stdout[-3000:]}" \
                                 f"\n{done.stderr[-3000:]}"
    assert run.expect in done.stdout, done.stdout[-3000:]
