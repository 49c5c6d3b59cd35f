"""The one configuration schema every host uses (Airflow extra, Prefect block, Ray runtime_env,
``keyless --config FILE``).

Field names are a contract shared with checks outside this repository: add fields, rename none.
:func:`load_config` turns a mapping, a JSON/YAML string or a file into :class:`KeylessConfig`,
or raises :class:`~keyless.errors.ConfigError` naming the field path at fault and what is allowed.

The package: :mod:`.base` (spec base, field-naming errors, string and URL checks) ->
:mod:`.sources` and :mod:`.targets` (the sections) -> :mod:`.model` (the whole config, loading,
JSON schema).
"""

from .base import PSEUDO_FILESYSTEMS, is_loopback, pseudo_filesystem, url_origin
from .model import (
    AuditSpec,
    DeliverySpec,
    KeylessConfig,
    RefreshSpec,
    config_json_schema,
    load_config,
)
from .sources import (
    SOURCE_SPECS,
    SOURCE_TYPES,
    AmbientSource,
    AwsWebIdentityTokenSource,
    ClientCredentialsSource,
    CommandSource,
    EnvSource,
    FileSource,
    GcpMetadataSource,
    GithubActionsSource,
    GitlabSource,
    SourceSpec,
    SpiffeSource,
    TokenExchangeSource,
)
from .targets import (
    AwsTarget,
    AzureTarget,
    DatabricksTarget,
    GcpTarget,
    HuggingFaceTarget,
    OAuth2Target,
    TargetsSpec,
)

__all__ = ["PSEUDO_FILESYSTEMS", "SOURCE_SPECS", "SOURCE_TYPES", "AmbientSource", "AuditSpec",
           "AwsTarget",
           "AwsWebIdentityTokenSource",
           "AzureTarget", "ClientCredentialsSource", "CommandSource", "DatabricksTarget",
           "DeliverySpec", "EnvSource", "FileSource", "GcpMetadataSource", "GcpTarget",
           "GithubActionsSource", "GitlabSource", "HuggingFaceTarget", "KeylessConfig",
           "OAuth2Target", "RefreshSpec", "SourceSpec", "SpiffeSource", "TargetsSpec",
           "TokenExchangeSource", "config_json_schema", "is_loopback", "load_config",
           "pseudo_filesystem", "url_origin"]
