"""``compressflow profile``: the table, the JSON object, time shares from a real profiler."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from torch import nn

from pipeline.cli import main as cli
from pipeline.cli import profile as profile_cli
from pipeline.cli.errors import UserError
from pipeline.measure import profiling


def run_profile(argv: list[str], capsys) -> tuple[int, str]:
    """Through the subcommand's own parser (the same ``register`` the CLI calls)."""
    parser = argparse.ArgumentParser()
    profile_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["profile", *argv])
    code = args.func(args)
    return code, capsys.readouterr().out


def test_the_subcommand_is_wired_into_the_cli():
    assert "pipeline.cli.profile" in cli.COMMANDS


def test_table_on_a_zoo_model_lists_layers_and_totals(capsys):
    code, out = run_profile(
        ["--model", "shufflenet_v2", "--model-option", "width=0.5", "--repeats", "2"], capsys
    )
    assert code == 0
    lines = out.splitlines()
    assert lines[1].split()[:4] == ["name", "type", "output", "shape"]
    assert any(line.startswith("stage2.0.shuffle ") and "ChannelShuffle" in line for line in lines)
    assert any(line.startswith("total ") for line in lines)
    assert "(counted " in out


def test_json_on_a_module_factory_model(capsys):
    code, out = run_profile(
        ["--model", "tests.helpers:tiny_cnn", "--input", "1x8x8", "--batch", "4", "--json"],
        capsys,
    )
    assert code == 0
    result = json.loads(out)
    layers, total = result["layers"], result["total"]
    keys = {"name", "type", "output_shape", "param_count", "macs", "bytes_moved", "time_share"}
    assert all(set(layer) == keys for layer in layers)
    assert {"param_count", "macs", "counted_macs", "bytes_moved"} <= set(total)
    assert total["macs"] == total["counted_macs"] == sum(layer["macs"] for layer in layers)
    # TinyNet at width 16: convs 1*16*9 + 16*16*9 + 16*32*9, BatchNorms 2*(16 + 16 + 32),
    # classifier 32*10 + 10.
    params = 144 + 2304 + 4608 + 128 + 330
    assert total["param_count"] == sum(layer["param_count"] for layer in layers) == params
    conv = next(layer for layer in layers if layer["name"] == "conv1")
    assert conv["output_shape"] == [4, 16, 8, 8] and conv["macs"] == 4 * 8 * 8 * 9 * 16
    shares = sum(layer["time_share"] for layer in layers) + total["unattributed_time_share"]
    assert shares == pytest.approx(1.0, abs=1e-3)


class Lopsided(nn.Module):
    """One layer does ~99% of the work: any honest profiler must say so."""

    def __init__(self) -> None:
        super().__init__()
        self.small = nn.Conv2d(8, 8, 1)
        self.big = nn.Conv2d(8, 128, 5, padding=2)

    def forward(self, x):
        return self.big(self.small(x))


@pytest.mark.parametrize("runtime", profiling.RUNTIMES)
def test_time_shares_come_from_measurement(runtime):
    result = profiling.profile_model(Lopsided(), (8, 32, 32), runtime, batch=4, repeats=3)
    shares = result.time_share
    assert shares["big"] > 0.5 > shares["small"]
    assert result.latency_ms > 0
    assert 0.0 <= result.unattributed_time_share < 0.5


def test_onnx_node_names_map_back_to_modules():
    assert profiling.onnx_node_module("/stage2/stage2.0/branch2/branch2.2/Relu_out") == (
        "stage2.0.branch2.2"
    )
    assert profiling.onnx_node_module("/fc/Gemm") == "fc"
    assert profiling.onnx_node_module("/Flatten") == ""
    assert profiling.onnx_node_module("ReorderOutput_token_1") is None


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--model", "resnet20", "--input", "3by32"], "--input"),
        (["--model", "resnet20", "--runtime", "cuda"], "--runtime"),
        (["--model", "no_such_model"], "no_such_model"),
        (["--model", "tests.helpers:not_a_module"], "not an nn.Module"),
        (["--model", "resnet20", "--input", "3x32x32", "--batch", "0"], "--batch"),
        (["--model", "resnet20", "--input", "3x32"], "does not run"),
    ],
)
def test_bad_input_is_a_user_error(argv, match, capsys):
    with pytest.raises(UserError, match=match):
        run_profile(argv, capsys)


def test_profile_runs_one_thread_by_default_and_restores_the_setting(capsys):
    before = torch.get_num_threads()
    run_profile(["--model", "tests.helpers:tiny_cnn", "--input", "1x8x8", "--json"], capsys)
    assert torch.get_num_threads() == before
