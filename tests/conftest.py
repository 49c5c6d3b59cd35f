"""Shared fixtures: the reference IdP (oidc-provider), moto behind the verifying STS front."""

pytest_plugins = ["tests.support.idp", "tests.support.aws", "keyless.testing.gcp_sts",
                  "tests.support.token_servers"]
