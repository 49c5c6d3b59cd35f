"""Shared fixtures: the reference IdP (oidc-provider), moto behind the verifying STS front."""

pytest_plugins = ["tests.support.idp", "tests.support.aws"]
