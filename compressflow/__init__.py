"""compressflow from Python: ``compress`` a model object to a target, ``load`` a past job.

import compressflow
result = compressflow.compress(model, (train, val, test), compressflow.Speedup(2))
result.best, result.report()
"""

from compressflow.errors import JobFailed, JobInterrupted, SpecError
from compressflow.job import compress
from compressflow.result import Result, load
from compressflow.targets import Compression, Speedup

__all__ = [
    "Compression",
    "JobFailed",
    "JobInterrupted",
    "Result",
    "SpecError",
    "Speedup",
    "compress",
    "load",
]
