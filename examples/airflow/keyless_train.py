"""An Airflow DAG that trains a small PyTorch model on data read from S3, each task with its
own short-lived, refreshed AWS identity from the ``keyless_default`` connection.

``keyless_train`` has two tasks:

- ``ensure_dataset``: makes sure ``s3://$KEYLESS_EXAMPLE_BUCKET/$KEYLESS_EXAMPLE_PREFIX`` holds
  training data: CSV shards ``data/part-*.csv`` (four features and a target per row). When
  there are none it writes a small synthetic set, so the DAG runs on an empty bucket too.
- ``train``: lists the shards and streams every one from S3 on every epoch (as an
  ``IterableDataset`` over a bucket would: the reads go on for the whole run, and the
  credentials under them roll over as they expire), fits a ``torch.nn.Linear`` regression
  with SGD, and writes the weights (``torch.save``) back to ``checkpoints/linear.pt``. It
  returns the loss and the weights.

The STS session of each task names the DAG and the task (``keyless-keyless_train-train-...``),
so CloudTrail says which task read the data and wrote the checkpoint. Nothing here holds a
key: the connection's token source (a Kubernetes projected token, a client-credentials grant)
is exchanged per task and refreshed by keyless.

Settings from the environment: ``KEYLESS_EXAMPLE_BUCKET``, ``KEYLESS_EXAMPLE_PREFIX``,
``KEYLESS_EXAMPLE_EPOCHS``. Run it with ``python keyless_train.py`` (``dag.test()``; this folder
must be the DAGs folder) or ``airflow dags test keyless_train``.
"""

from __future__ import annotations

import io
import os
import sys
from typing import Any

from airflow.sdk import dag, task

BUCKET = os.environ.get("KEYLESS_EXAMPLE_BUCKET", "my-training-data")
PREFIX = os.environ.get("KEYLESS_EXAMPLE_PREFIX", "keyless-example/")
EPOCHS = int(os.environ.get("KEYLESS_EXAMPLE_EPOCHS", "40"))
CONN_ID = "keyless_default"
FEATURES = 4


def _shard_keys(s3: Any) -> list[str]:
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}data/part-")
    return sorted(item["Key"] for item in listing.get("Contents", []))


@dag(schedule=None, catchup=False, tags=["keyless", "pytorch"])
def keyless_train() -> None:
    @task
    def ensure_dataset() -> int:
        """The number of shards; writes a synthetic set (y = x . [2, -1, 0.5, 3] + 0.25)
        when there are none."""
        import torch

        from keyless_airflow import KeylessHook

        s3 = KeylessHook(CONN_ID).get_client_type("s3")
        existing = _shard_keys(s3)
        if existing:
            return len(existing)
        generator = torch.Generator().manual_seed(0)
        for part in range(4):
            x = torch.randn(64, FEATURES, generator=generator)
            y = x @ torch.tensor([2.0, -1.0, 0.5, 3.0]) + 0.25
            lines = [",".join(f"{v:.6f}" for v in [*row.tolist(), target])
                     for row, target in zip(x, y.tolist(), strict=True)]
            s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}data/part-{part}.csv",
                          Body="\n".join(["x0,x1,x2,x3,y", *lines]).encode())
        return len(_shard_keys(s3))

    @task
    def train() -> dict[str, Any]:
        """Stream the shards from S3 every epoch, fit a linear model, save it to S3."""
        import torch

        from keyless_airflow import KeylessHook

        s3 = KeylessHook(CONN_ID).get_client_type("s3")  # this task's own, refreshed identity
        keys = _shard_keys(s3)

        def batches() -> Any:
            for key in keys:  # read from S3 again on every epoch, as a streaming dataset does
                text = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()
                rows = torch.tensor([[float(v) for v in line.split(",")]
                                     for line in text.splitlines()[1:] if line])
                for batch in torch.split(rows, 32):
                    yield batch[:, :FEATURES], batch[:, FEATURES:]

        torch.manual_seed(0)
        model = torch.nn.Linear(FEATURES, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        loss_fn = torch.nn.MSELoss()
        loss = torch.tensor(0.0)
        for epoch in range(EPOCHS):
            for x, y in batches():
                optimizer.zero_grad()
                loss = loss_fn(model(x), y)
                loss.backward()
                optimizer.step()
            print(f"epoch {epoch}: loss {loss.item():.6f}")
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        checkpoint = f"{PREFIX}checkpoints/linear.pt"
        s3.put_object(Bucket=BUCKET, Key=checkpoint, Body=buffer.getvalue())
        return {"loss": loss.item(), "shards": len(keys), "checkpoint": checkpoint,
                "weight": model.weight.detach().flatten().tolist(),
                "bias": model.bias.detach().item()}

    ensure_dataset() >> train()


DAG = keyless_train()

if __name__ == "__main__":
    run = DAG.test()
    print(f"KEYLESS_DAGRUN {run.dag_id} {run.state}")
    sys.exit(0 if str(run.state) in ("success", "DagRunState.SUCCESS") else 1)
