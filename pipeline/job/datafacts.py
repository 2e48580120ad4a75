"""The job's data as MLflow records it for a run's inputs (what ``mlflow.log_input``
logs): a name, a digest that changes when the data or its splits change, and sizes."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pipeline.job.settings import splits_for
from pipeline.spec import JobSpec


def dataset_facts(spec: JobSpec) -> dict[str, Any]:
    """Name, digest (of the split tensors where the source yields tensors, else of its
    definition), source and split sizes: the keywords of ``Tracker.log_dataset``."""
    splits = splits_for(spec)
    d = spec.data
    source = {
        "source": d.source,
        "image_size": d.image_size,
        "limit": d.limit,
        "val_fraction": d.val_fraction,
        "test_fraction": d.test_fraction,
        "seed": spec.seed,
    }
    h = hashlib.sha256(json.dumps(source, sort_keys=True).encode())
    sizes = {}
    for name in ("train", "val", "test"):
        ds = getattr(splits, name)
        sizes[name] = len(ds)
        for t in getattr(ds, "tensors", ()):
            h.update(t.contiguous().numpy().tobytes())
    return {
        "name": d.source.split(":")[0] if ":" in d.source else d.source,
        "digest": h.hexdigest()[:16],
        "source": source,
        "profile": {
            "splits": sizes,
            "num_classes": splits.num_classes,
            "input_shape": list(splits.input_shape),
        },
    }
