"""An ONNX graph as an ``nn.Module`` (e.g. an int8 model from onnxruntime's quantiser):
its forward runs onnxruntime, so accuracy is measured by the same code as any other
candidate, and ``export_onnx`` hands the graph itself to the latency benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from learners.formats.export import ort_session


class OnnxModule(nn.Module):
    """An ONNX graph as a module: forward runs onnxruntime on CPU (float32 out).

    Only meaningful on runtime ``onnxruntime-cpu``: timing its forward under torch would
    measure onnxruntime anyway, plus copies.
    """

    runtimes = ("onnxruntime-cpu",)

    def __init__(self, onnx_bytes: bytes, threads: int = 1) -> None:
        super().__init__()
        self.onnx_bytes = bytes(onnx_bytes)
        self.threads = threads
        self._session: Any = None

    def _get_session(self) -> Any:
        if self._session is None:
            self._session = ort_session(self.onnx_bytes, self.threads)
        return self._session

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        session = self._get_session()
        x = x.detach().cpu()
        x = x.float() if x.is_floating_point() else x  # token ids stay int64
        feed = {session.get_inputs()[0].name: x.numpy()}
        return torch.from_numpy(session.run(None, feed)[0])

    def export_onnx(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.onnx_bytes)
        return path

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_session"] = None  # sessions do not pickle; rebuilt on first forward
        return state

    def __deepcopy__(self, memo: dict[int, Any]) -> OnnxModule:
        clone = OnnxModule(self.onnx_bytes, self.threads)
        clone.train(self.training)
        return clone
