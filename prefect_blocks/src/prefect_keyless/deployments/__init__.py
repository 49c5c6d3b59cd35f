"""Deployment steps on keyless credentials (``prefect_keyless.deployments.steps``)."""
