"""A model source for the signal tests: the tests' tiny CNN, slow only while training.

``tests.slow_model:slow_cnn`` sleeps ``COMPRESSFLOW_TEST_STEP_S`` seconds (default 0.2)
per training batch, so a fine-tuning round lasts long enough for a test to interrupt it;
evaluation, export and latency timing run at full speed.
"""

from __future__ import annotations

import os
import time

import torch

from tests.helpers import TinyNet


class SlowTrainingNet(TinyNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            time.sleep(float(os.environ.get("COMPRESSFLOW_TEST_STEP_S", "0.2")))
        return super().forward(x)


def slow_cnn(num_classes: int = 10, in_channels: int = 1) -> SlowTrainingNet:
    torch.manual_seed(0)
    return SlowTrainingNet(num_classes, in_channels, 16)
