"""prefect_keyless: keyless for its host. Its host plugin lands in its own issue."""

__all__: list[str] = []
