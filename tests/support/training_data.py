"""Training data for the example DAG and flow that train on S3: CSV shards of a known linear
function, so a test can tell from the learned weights that the model saw exactly this data."""

from __future__ import annotations

from collections.abc import Sequence


def linear_csv_shards(weight: Sequence[float], bias: float, *, shards: int, rows: int,
                      seed: int) -> list[str]:
    """``shards`` CSV texts (header ``x0,...,y``, then ``rows`` rows) of
    ``y = x . weight + bias`` over standard-normal ``x``, reproducible from ``seed``."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    header = ",".join([*(f"x{i}" for i in range(len(weight))), "y"])
    texts = []
    for _ in range(shards):
        x = torch.randn(rows, len(weight), generator=generator)
        y = x @ torch.tensor(list(weight)) + bias
        lines = [",".join(f"{v:.6f}" for v in [*row.tolist(), target])
                 for row, target in zip(x, y.tolist(), strict=True)]
        texts.append("\n".join([header, *lines]))
    return texts
