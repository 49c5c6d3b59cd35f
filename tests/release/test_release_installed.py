"""Each distribution installed alone from its wheel, beside its host, works as the README says
(issue 22). The environments are .envs/wheels/NAME (dev.py's release step: the built wheels
plus the package index, nothing editable, nothing from the source tree):

- ``keyless``: ``keyless[aws,demo]``: ``keyless demo`` runs the whole federation;
- ``airflow``: Airflow 3.3 lists the provider, its ``keyless`` connection type and hook;
- ``prefect``: Prefect 3.9 loads the ``prefect.collections`` entry point and registers the block;
- ``ray``: Ray 2.60 loads ``keyless_ray.KeylessPlugin`` from ``RAY_RUNTIME_ENV_PLUGINS`` as a
  node's runtime-env agent does, and its schema manager checks a ``keyless`` value against the
  schema ``python -m keyless_ray.schema`` wrote (no cluster is started);
- everywhere: ``import keyless`` imports no cloud SDK.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest

from tests.release.release_artifacts import (
    BY_DIRECTORY,
    ROOT,
    Distribution,
    run_in,
    source_version,
)

#: wheel environment -> the distributions installed there from their wheels
INSTALLED = {"keyless": ["core"], "airflow": ["core", "airflow_provider"],
             "prefect": ["core", "prefect_blocks"], "ray": ["core", "ray_runtime"]}
CLOUD_SDKS = ("boto3", "botocore", "aiobotocore", "google.auth", "google.cloud", "azure",
              "databricks", "huggingface_hub", "mlflow", "opentelemetry", "moto")
CONFIG = {"source": {"type": "file", "path": "/var/run/secrets/tokens/keyless"},
          "target": {"aws": {"role_arn": "arn:aws:iam::123456789012:role/ray-trainer",
                             "region": "us-east-1", "session_name": "train-{job_id}-r{rank}"}}}


def _python(env: str, code: str, cwd: Path, **extra_env: str) -> str:
    done = run_in(env, ["python", "-c", code], cwd, extra_env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _wheel_hashes(distribution: Distribution) -> dict[str, str]:
    """path -> sha256 (RECORD's urlsafe base64) of every module in the built wheel."""
    with zipfile.ZipFile(distribution.archive("-py3-none-any.whl")) as wheel:
        [record] = [n for n in wheel.namelist() if n.endswith(".dist-info/RECORD")]
        rows = [line.split(",") for line in wheel.read(record).decode().splitlines()]
    return {path: digest for path, digest, *_ in rows if path.endswith(".py")}


@pytest.mark.parametrize(("env", "directory"),
                         [(env, d) for env, dirs in INSTALLED.items() for d in dirs],
                         ids=[f"{env}-{d}" for env, dirs in INSTALLED.items() for d in dirs])
def test_installed_from_the_built_wheel(env: str, directory: str, tmp_path: Path) -> None:
    distribution = BY_DIRECTORY[directory]
    code = (f"import importlib.metadata as m, json; d = m.distribution({distribution.name!r}); "
            "print(json.dumps({'version': d.version, 'direct_url': d.read_text('direct_url.json'),"
            " 'location': str(d.locate_file('')), 'files': {str(f): f.hash.value for f in "
            "d.files if f.hash and str(f).endswith('.py')}}))")
    found = json.loads(_python(env, code, tmp_path))
    assert found["version"] == source_version(distribution)
    direct = json.loads(found["direct_url"])
    assert direct["url"] == distribution.archive("-py3-none-any.whl").as_uri()
    assert "dir_info" not in direct, "installed editable"
    assert not Path(found["location"]).resolve().is_relative_to(ROOT / directory)
    assert found["files"] == {path: digest.removeprefix("sha256=") for path, digest in
                              _wheel_hashes(distribution).items()}, \
        "the environment holds another build than .envs/dist's wheel"


@pytest.mark.parametrize("env", sorted(INSTALLED))
def test_import_keyless_imports_no_cloud_sdk(env: str, tmp_path: Path) -> None:
    code = ("import sys, json, keyless; print(json.dumps([keyless.__file__, keyless.__version__,"
            " sorted(sys.modules)]))")
    location, version, modules = json.loads(_python(env, code, tmp_path))
    assert version == source_version(BY_DIRECTORY["core"])
    assert "/.envs/wheels/" in location, location
    loaded = [m for m in modules if any(m == sdk or m.startswith(f"{sdk}.") for sdk in CLOUD_SDKS)]
    assert not loaded, f"`import keyless` imported cloud SDK modules: {loaded[:10]}"


def test_keyless_demo_runs_from_the_installed_wheel(tmp_path: Path) -> None:
    done = run_in("keyless", ["keyless", "demo", "--workers", "2", "--seconds", "4",
                              "--token-seconds", "4", "--session-seconds", "3"], tmp_path,
                  timeout=240)
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    assert "demo passed" in out
    ranks = re.findall(r"^OK   rank (\d+): .* cross-shard read=AccessDenied$", out, re.MULTILINE)
    assert sorted(ranks) == ["0", "1"], out[-2000:]


def test_airflow_lists_the_provider_and_its_connection_type(tmp_path: Path) -> None:
    home = {"AIRFLOW_HOME": str(tmp_path / "airflow")}
    listed = run_in("airflow", ["airflow", "providers", "list", "-o", "json"], tmp_path, home)
    assert listed.returncode == 0, listed.stderr[-3000:]
    providers = {p["package_name"]: p for p in json.loads(listed.stdout)}
    provider = providers.get("airflow-provider-keyless")
    assert provider is not None, sorted(providers)
    assert provider["version"] == source_version(BY_DIRECTORY["airflow_provider"])
    hooks = run_in("airflow", ["airflow", "providers", "hooks", "-o", "json"], tmp_path, home)
    assert hooks.returncode == 0, hooks.stderr[-3000:]
    [keyless] = [h for h in json.loads(hooks.stdout) if h["connection_type"] == "keyless"]
    assert keyless == {"connection_type": "keyless", "class": "keyless_airflow.hooks.KeylessHook",
                       "conn_id_attribute_name": "keyless_conn_id",
                       "package_name": "airflow-provider-keyless",
                       "hook_name": "OIDC workload identity (keyless)"}


def test_prefect_registers_the_block_from_the_entry_point(tmp_path: Path) -> None:
    code = """
import json, sys, uuid
from prefect.blocks.core import Block
from prefect.plugins import load_prefect_collections
assert "prefect_keyless" not in sys.modules
loaded = load_prefect_collections()                    # what a Prefect server does at start
block = Block.get_block_class_from_key("keyless-credentials")
schema = block._to_block_schema(block_type_id=uuid.uuid4())
print(json.dumps({"collections": sorted(loaded), "class": f"{block.__module__}.{block.__name__}",
                  "fields": sorted(schema.fields["properties"]),
                  "secrets": schema.fields.get("secret_fields", [])}))
"""
    found = json.loads(_python("prefect", code, tmp_path, PREFECT_HOME=str(tmp_path / "prefect"),
                               PREFECT_SERVER_ANALYTICS_ENABLED="false"))
    assert "prefect_keyless" in found["collections"]
    assert found["class"] == "prefect_keyless.credentials.KeylessCredentials"
    assert {"source", "target", "refresh", "audit", "delivery"} <= set(found["fields"])
    assert any(field.endswith("client_secret") for field in found["secrets"]), found["secrets"]


def test_ray_loads_the_plugin_and_validates_with_its_schema(tmp_path: Path) -> None:
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    written = run_in("ray", ["python", "-m", "keyless_ray.schema", str(schemas)], tmp_path)
    assert written.returncode == 0, written.stderr[-3000:]
    assert (schemas / "keyless.json").is_file()
    code = f"""
import json, jsonschema
from ray._private.runtime_env.plugin import RuntimeEnvPluginManager
from ray.runtime_env import RuntimeEnv
import keyless_ray.bootstrap as bootstrap
plugins = RuntimeEnvPluginManager().plugins             # what each node's agent loads
plugin = plugins["keyless"].class_instance
config = {json.dumps(CONFIG)}
RuntimeEnv().set("keyless", config)     # Ray's schema manager checks a plugin key set this way
try:
    RuntimeEnv().set("keyless", {{**config, "target": {{"aws": {{"region": "us-east-1"}}}}}})
    refused = None
except jsonschema.ValidationError as error:
    refused = error.message
print(json.dumps({{"class": type(plugin).__module__ + "." + type(plugin).__name__,
                  "site": (bootstrap.SITE_DIRECTORY / "sitecustomize.py").is_file(),
                  "uris": plugin.get_uris({{}}), "refused": refused}}))
"""
    plugin_setting = json.dumps([{"class": "keyless_ray.KeylessPlugin"}])
    found = json.loads(_python("ray", code, tmp_path, RAY_RUNTIME_ENV_PLUGINS=plugin_setting,
                               RAY_RUNTIME_ENV_PLUGIN_SCHEMAS=str(schemas)).splitlines()[-1])
    assert found["class"] == "keyless_ray.plugin.KeylessPlugin"
    assert found["site"] is True
    assert found["uris"] == []
    assert found["refused"] is not None and "role_arn" in found["refused"], found
