"""keyless.host, what the three hosts share: the per-process cache (bounded, fork-safe, never
pickled with its values) and the secret fields read from the schema's own flag."""

from __future__ import annotations

import copy
import os
import pickle

import pytest

from keyless import ConfigError
from keyless.host import ProcessCache, host_config_error, secret_fields, secret_paths


def test_the_cache_builds_once_per_key_and_drops_the_least_recently_used() -> None:
    cache: ProcessCache[str, object] = ProcessCache(2)
    first, built = cache.get("a", object)
    assert built and cache.get("a", object) == (first, False)
    cache.get("b", object)
    cache.get("a", object)  # a is now the most recently used
    cache.get("c", object)  # so b goes
    assert len(cache) == 2 and cache.get("b", object)[1] is True


def test_the_cache_crosses_no_process_boundary() -> None:
    cache: ProcessCache[str, object] = ProcessCache()
    cache.get("a", object)
    assert len(pickle.loads(pickle.dumps(cache))) == 0
    assert len(copy.deepcopy(cache)) == 0 and copy.deepcopy(cache) == cache
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the parent's values are not here
        os.write(write, str(len(cache)).encode())
        os._exit(0)
    os.close(write)
    assert os.read(read, 8) == b"0"
    os.waitpid(pid, 0)
    assert len(cache) == 1  # the parent keeps its own


def test_secret_fields_come_from_the_schema_flag() -> None:
    assert secret_fields() == {"client_secret", "private_key"}
    config = {"source": {"type": "token_exchange", "client_secret": "s",
                         "subject": {"type": "client_credentials", "private_key": "k",
                                     "client_secret": ""}},
              "target": {"oauth2": {"token_url": "https://x"}}}
    assert secret_paths(config) == ["source.client_secret", "source.subject.private_key"]


def test_host_config_errors_keep_the_field() -> None:
    error = host_config_error("prefect block", ConfigError("config: x: bad", field="x"))
    assert str(error).startswith("prefect block: config: x: bad") and error.field == "x"
    with pytest.raises(ConfigError):
        raise error
