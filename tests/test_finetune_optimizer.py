"""The fine-tune loop's optimiser choice: sgd for convolutional networks, adamw (with
its own defaults) for pretrained transformers."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from learners.finetune import ADAMW_DEFAULTS, TrainSettings, make_optimizer, train_
from pipeline import spec
from pipeline.job.settings import pretrain_settings, train_settings


def _separable(n: int = 256) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=32)


def test_adamw_is_the_optimiser_asked_for_and_it_trains():
    torch.manual_seed(0)
    model = nn.Linear(8, 2)
    settings = TrainSettings(epochs=5, lr=5e-2, weight_decay=0.01, optimizer="adamw")
    opt = make_optimizer(model, settings)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["weight_decay"] == 0.01
    assert isinstance(make_optimizer(model, TrainSettings()), torch.optim.SGD)
    curve = train_(model, _separable(), None, settings)
    assert curve["train_loss"][-1] < 0.7 * curve["train_loss"][0]


def test_an_unknown_optimiser_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="sgd"):
        TrainSettings(optimizer="adam")
    with pytest.raises(spec.SpecError, match="adamw"):
        spec.parse({"target": {"speedup": 2}, "finetune": {"optimizer": "adam"}})


def test_adamw_jobs_get_adamw_rates_unless_they_set_their_own():
    job = spec.parse({"target": {"speedup": 2}, "finetune": {"optimizer": "adamw"}})
    f = job.finetune
    assert (f.lr, f.pretrain_lr, f.weight_decay) == (
        ADAMW_DEFAULTS["lr"],
        ADAMW_DEFAULTS["pretrain_lr"],
        ADAMW_DEFAULTS["weight_decay"],
    )
    assert train_settings(job).optimizer == pretrain_settings(job).optimizer == "adamw"
    own = spec.parse({"target": {"speedup": 2}, "finetune": {"optimizer": "adamw", "lr": 2e-5}})
    assert own.finetune.lr == 2e-5 and own.finetune.pretrain_lr == ADAMW_DEFAULTS["pretrain_lr"]
    sgd = spec.parse({"target": {"speedup": 2}})
    assert sgd.finetune.optimizer == "sgd" and sgd.finetune.lr == 0.02
    assert spec.parse(job.to_dict()) == job
