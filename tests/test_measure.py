import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from learners.formats import export
from pipeline import measure
from tests.helpers import TinyNet, example_inputs


def test_flops_are_twice_the_analytic_macs_of_a_conv():
    conv = nn.Conv2d(4, 8, 3, padding=1, bias=False)
    macs = 16 * 16 * 4 * 9 * 8  # H * W * N * K^2 * M
    assert measure.count_flops(conv, torch.randn(1, 4, 16, 16)) == 2 * macs


def test_time_interleaved_returns_one_median_per_runner():
    calls = []
    runners = [lambda: calls.append("a"), lambda: calls.append("b")]
    medians = measure.time_interleaved(runners, warmup=1, repeats=4)
    assert len(medians) == 2 and all(m >= 0 for m in medians)
    # alternating order: a b, b a, a b, b a after the warm-up
    assert calls[2:] == ["a", "b", "b", "a", "a", "b", "b", "a"]


def test_a_sleeping_model_is_measured_slower():
    class Sleepy(nn.Module):
        def forward(self, x):
            import time

            time.sleep(0.004)
            return x

    # By the wall clock: a sleeping thread uses no CPU time, so the cpu clock sees none.
    settings = measure.LatencySettings(repeats=5, clock="wall")
    timing = measure.compare_latency(Sleepy(), nn.Identity(), torch.randn(1, 2), settings, None)
    assert timing.baseline_ms >= 4.0 > timing.candidate_ms and timing.speedup > 1


def test_onnx_export_matches_torch_and_times_on_onnxruntime(tmp_path):
    model = TinyNet().eval()
    x = example_inputs()
    path = export.export_onnx(model, x, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = torch.randn(5, 1, 8, 8)
    (out,) = session.run(None, {"input": batch.numpy()})  # dynamic batch axis
    np.testing.assert_allclose(out, model(batch).detach().numpy(), rtol=1e-4, atol=1e-5)
    settings = measure.LatencySettings(runtime="onnxruntime-cpu", batch_size=4, repeats=3)
    timing = measure.compare_latency(model, model, x, settings, tmp_path)
    assert timing.baseline_ms > 0 and timing.candidate_ms > 0


def test_deployable_is_onnx_unless_the_model_packs_itself(tmp_path):
    x = example_inputs()
    assert export.save_deployable(TinyNet(), x, tmp_path / "a").suffix == ".onnx"

    class Packed(TinyNet):
        packed_suffix = ".tiny"

        def save_packed(self, path):
            path.write_bytes(b"12345")

    path = export.save_deployable(Packed(), x, tmp_path / "b")
    assert path.suffix == ".tiny" and measure.file_bytes(path) == 5


def test_threads_are_restored():
    before = torch.get_num_threads()
    with measure.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
