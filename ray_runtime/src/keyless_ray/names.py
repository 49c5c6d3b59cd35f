"""The names shared by the runtime-env agent (plugin) and the workers (helpers).

Every variable the plugin puts into ``context.env_vars`` carries a path, an id or a marker:
Ray logs those variables in plaintext, so never a token or a secret.
"""

from __future__ import annotations

__all__ = ["MANIFEST_VARIABLE", "MARKER_VARIABLE", "PLUGIN_NAME", "PLUGIN_SETTING",
           "PLUGIN_SPEC", "URI_SCHEME", "missing_plugin_message"]

#: The runtime_env key (``runtime_env={"keyless": {...}}``) and the plugin's name.
PLUGIN_NAME = "keyless"
#: The environment variable that registers plugins with Ray (set on every node before start).
PLUGIN_SETTING = "RAY_RUNTIME_ENV_PLUGINS"
#: Its value for keyless: ``RAY_RUNTIME_ENV_PLUGINS='[{"class":"keyless_ray.KeylessPlugin"}]'``.
PLUGIN_SPEC = '[{"class":"keyless_ray.KeylessPlugin"}]'
#: Set in every worker the plugin prepared: the config id (a hash prefix, not a secret).
MARKER_VARIABLE = "KEYLESS_RAY"
#: Path of the worker manifest (0600 JSON: config without its source, token-file paths).
MANIFEST_VARIABLE = "KEYLESS_RAY_MANIFEST"
#: URIs the plugin reports to Ray: ``keyless://<config id>``, one per config per node.
URI_SCHEME = "keyless://"


def missing_plugin_message(component: str) -> str:
    """The error text for a worker whose node never ran the plugin."""
    return (f"{component}: this Ray worker has no keyless identity (${MARKER_VARIABLE} is not "
            f"set): the node's runtime-env agent does not have the keyless plugin registered, "
            f"or the task/actor/job has no runtime_env={{'{PLUGIN_NAME}': ...}}; fix: start "
            f"every node (`ray start`, KubeRay head and worker groups) with "
            f"{PLUGIN_SETTING}='{PLUGIN_SPEC}' and give the work a '{PLUGIN_NAME}' runtime env")
