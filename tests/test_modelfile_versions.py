"""Weights the job saves as safetensors keep the module versions some architectures need
to load them (torchvision's MNASNet refuses a state dict without them)."""

import pytest
import torch
from torch import nn

from learners.formats.modelfile import load_model, save_model


class Versioned(nn.Module):
    """Loads only state dicts that say which version wrote them, as MNASNet does."""

    _version = 2

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)
        self.tied = self.head  # one tensor under two names: stored once

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn(self.conv(x)).mean((2, 3)))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        version = local_metadata.get("version")
        if version not in (1, 2):
            raise ValueError(f"version should be set to 1 or 2 instead of {version}")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)


def test_a_versioned_module_reloads_from_the_jobs_safetensors(tmp_path):
    torch.manual_seed(0)
    model = Versioned().eval()
    path = save_model(model, tmp_path / "model.safetensors")
    again = load_model(Versioned(), path)
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(again(x), model(x))
    assert again.tied.weight is again.head.weight


def test_without_the_versions_it_would_not_load(tmp_path):
    from safetensors.torch import save_model as bare_save

    path = tmp_path / "bare.safetensors"
    bare_save(Versioned(), str(path))  # what the job wrote before: tensors only
    with pytest.raises(ValueError, match="version should be set"):
        load_model(Versioned(), path)
