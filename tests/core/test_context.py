"""keyless.context: the worker's identity, templates and STS session names."""

from __future__ import annotations

import json
import os
import re
import socket

import pytest

from keyless.context import (
    TEMPLATE_FIELDS,
    WorkerContext,
    check_json_template,
    check_template,
    fields_used,
    render_json_template,
    render_session_name,
    render_template,
    sanitize_session_name,
    unresolved_rank_fields,
)
from keyless.errors import ConfigError

VALID = re.compile(r"^[\w+=,.@-]{2,64}$", re.ASCII)


# ----------------------------------------------------------------------------- from_environment

def test_from_environment_reads_torchrun_variables() -> None:
    ctx = WorkerContext.from_environment({"RANK": "3", "LOCAL_RANK": "1"})
    assert (ctx.rank, ctx.local_rank) == ("3", "1")
    assert ctx.pid == str(os.getpid()) and ctx.host == socket.gethostname()
    assert (ctx.job_id, ctx.task_id, ctx.run_id, ctx.node) == ("", "", "", "")


def test_keyless_variables_override_torchrun() -> None:
    env = {"RANK": "3", "LOCAL_RANK": "1", "KEYLESS_RANK": "7", "KEYLESS_LOCAL_RANK": "2",
           "KEYLESS_JOB_ID": "job", "KEYLESS_TASK_ID": "task", "KEYLESS_RUN_ID": "run",
           "KEYLESS_NODE": "n1"}
    ctx = WorkerContext.from_environment(env)
    assert ctx.as_dict() | {"pid": "", "host": ""} == {
        "job_id": "job", "task_id": "task", "run_id": "run", "rank": "7", "local_rank": "2",
        "node": "n1", "pid": "", "host": ""}


def test_explicit_overrides_win() -> None:
    env = {"RANK": "3", "KEYLESS_JOB_ID": "env-job"}
    ctx = WorkerContext.from_environment(env, job_id="dag.task", rank="5", host="h")
    assert (ctx.job_id, ctx.rank, ctx.host) == ("dag.task", "5", "h")


def test_empty_environment_leaves_fields_empty() -> None:
    ctx = WorkerContext.from_environment({})
    assert ctx.rank == "" and ctx.local_rank == "" and ctx.job_id == ""


def test_with_values_stringifies_and_blanks_none() -> None:
    ctx = WorkerContext(rank="1").with_values(rank=4, job_id=None)
    assert (ctx.rank, ctx.job_id) == ("4", "")
    assert list(ctx.as_dict()) == list(TEMPLATE_FIELDS)


# ----------------------------------------------------------------------------- templates

def test_render_template() -> None:
    ctx = WorkerContext(job_id="j", rank="2", host="h")
    assert render_template("k-{job_id}-{rank}-{host}-{pid}", ctx) == "k-j-2-h-"
    assert render_template("{{literal}}-{rank}", ctx) == "{literal}-2"


def test_render_does_not_expand_values() -> None:
    ctx = WorkerContext(job_id="{rank}", rank="1")
    assert render_template("{job_id}", ctx) == "{rank}"


@pytest.mark.parametrize("template", ["{foo}", "{rank!r}", "{rank:>5}", "{0}", "{}",
                                      "{rank[0]}", "{rank.real}", "x}", "{rank"])
def test_check_template_refuses(template: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_template(template, "target.aws.session_name")
    assert info.value.field == "target.aws.session_name"
    assert "target.aws.session_name" in str(info.value)


def test_check_template_unknown_placeholder_lists_allowed() -> None:
    with pytest.raises(ConfigError, match=r"unknown placeholder \{foo\}.*\{rank\}"):
        check_template("{foo}", "tags.x")


def test_json_template_renders_inside_string_values() -> None:
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:GetObject",
         "Resource": "arn:aws:s3:::bucket/shards/{rank}/*"}]}
    check_json_template(policy, "session_policy")
    check_json_template(json.dumps(policy), "session_policy")
    ctx = WorkerContext(rank='3"}')  # a hostile value cannot break the document
    for value in (policy, json.dumps(policy)):
        out = json.loads(render_json_template(value, ctx))
        assert out["Statement"][0]["Resource"] == 'arn:aws:s3:::bucket/shards/3"}/*'


def test_json_template_names_the_inner_path() -> None:
    with pytest.raises(ConfigError) as info:
        check_json_template({"Statement": [{"Resource": "{shard}"}]}, "session_policy")
    assert info.value.field == "session_policy.Statement.0.Resource"


def test_non_json_string_is_a_plain_template() -> None:
    check_json_template("{{\"a\": \"{rank}\"}}", "p")
    assert render_json_template("{{\"a\": \"{rank}\"}}", WorkerContext(rank="1")) == '{"a": "1"}'


# ----------------------------------------------------------------------------- session names

@pytest.mark.parametrize(("raw", "expected"), [
    ("keyless-{job_id}-{task_id}-{rank}", "keyless-3"),  # rendered with empty job/task
    ("keyless---3--", "keyless-3"),
    ("my job/rank 3", "my-job-rank-3"),
    ("rank=3,node@a.b+c_d", "rank=3,node@a.b+c_d"),
    ("café-π", "caf"),
    ("", "keyless"),
    ("-", "keyless"),
    ("a", "a-keyless"),
    ("...", "keyless"),
])
def test_sanitize_session_name(raw: str, expected: str) -> None:
    if "{" in raw:
        raw = render_template(raw, WorkerContext(rank="3"))
    result = sanitize_session_name(raw)
    assert result == expected
    assert VALID.match(result)


def test_long_session_name_is_cut_to_64_with_a_hash_of_the_whole() -> None:
    result = sanitize_session_name("keyless-" + "x" * 100 + "-rank-3")
    other = sanitize_session_name("keyless-" + "x" * 100 + "-rank-4")
    assert len(result) == 64 and VALID.match(result)
    assert result != other and result[:55] == other[:55]
    assert sanitize_session_name("a" * 64) == "a" * 64


# ----------------------------------------------------------------------------- per-rank names

LONG = WorkerContext(job_id="nightly_training_pipeline_v2", task_id="train_resnet50_distributed",
                     run_id="scheduled__2026-12-05T00:00:00+00:00", host="gpu-node-17", pid="4242")


def test_long_names_keep_every_rank_distinct_and_visible() -> None:
    template = "keyless-{job_id}-{task_id}-{run_id}-r{rank}-l{local_rank}-{host}"
    names = {}
    for rank in range(8):
        sent, full = render_session_name(template, LONG.with_values(rank=rank,
                                                                     local_rank=rank % 4))
        assert len(sent) <= 64 and VALID.match(sent), sent
        assert f"-r{rank}-l{rank % 4}-" in sent  # the rank itself stays whole
        assert len(full) > 64 and f"-r{rank}-" in full
        names[rank] = sent
    assert len(set(names.values())) == 8


def test_short_names_are_unchanged() -> None:
    assert render_session_name("job-{rank}", WorkerContext(rank="3")) == ("job-3", "job-3")


def test_names_differing_only_past_the_cut_stay_distinct() -> None:
    one = render_session_name("{job_id}", WorkerContext(job_id="a" * 80 + "1"))[0]
    two = render_session_name("{job_id}", WorkerContext(job_id="a" * 80 + "2"))[0]
    assert one != two and len(one) <= 64 and len(two) <= 64


def test_a_process_context_comes_from_its_own_environment_not_the_launchers() -> None:
    launcher = WorkerContext.from_environment({"RANK": "0", "KEYLESS_JOB_ID": "job"})
    assert launcher.rank == "0"
    rank = launcher.for_process({"RANK": "3", "LOCAL_RANK": "1", "GROUP_RANK": "1",
                                 "TORCHELASTIC_RUN_ID": "elastic-7"})
    assert (rank.rank, rank.local_rank, rank.node, rank.run_id, rank.job_id) == \
        ("3", "1", "1", "elastic-7", "job")
    assert rank.pid == launcher.pid  # the launch's pid: a restarted rank keeps its session
    bare = launcher.for_process({})
    assert bare.rank == "" and bare.local_rank == ""  # never the launcher's "0"
    hosted = launcher.with_values(run_id="dag-run").for_process({"TORCHELASTIC_RUN_ID": "x"})
    assert hosted.run_id == "dag-run"  # the host's run wins


def test_torchrun_variables_fill_node_and_run_id() -> None:
    context = WorkerContext.from_environment({"GROUP_RANK": "2", "TORCHELASTIC_RUN_ID": "r"})
    assert (context.node, context.run_id) == ("2", "r")
    context = WorkerContext.from_environment({"GROUP_RANK": "2", "KEYLESS_NODE": "n"})
    assert context.node == "n"


def test_unresolved_rank_fields_name_the_config_field() -> None:
    templates = {"target.aws.session_name": "job-{job_id}",
                 "target.aws.session_policy": {"Resource": "b/{local_rank}/*"}}
    assert unresolved_rank_fields(templates, WorkerContext()) == \
        [("target.aws.session_policy", "local_rank")]
    assert unresolved_rank_fields(templates, WorkerContext(local_rank="0")) == []
    assert fields_used({"a": ["{rank}", "x-{node}"]}) == {"rank", "node"}


def test_torchrun_rank_wins_over_a_keyless_rank_the_process_inherited() -> None:
    launcher = WorkerContext.from_environment({"KEYLESS_RANK": "0"})
    assert launcher.rank == "0"  # in its own process the override wins
    rank = launcher.for_process({"KEYLESS_RANK": "0", "RANK": "3", "LOCAL_RANK": "1"})
    assert (rank.rank, rank.local_rank) == ("3", "1")
    assert launcher.for_process({"KEYLESS_RANK": "5"}).rank == "5"  # no torchrun variable
