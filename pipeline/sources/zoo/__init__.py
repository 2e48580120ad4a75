"""Built-in model zoo: a name -> factory registry.

Every factory takes ``num_classes`` and ``in_channels`` keyword arguments and returns an
untrained ``nn.Module``. Third parties add models through ``register``.

The lightweight networks (``mobilenet_v1/v2``, ``shufflenet_v1/v2``) also take
``stem="cifar"`` (32x32 inputs, the default) or ``stem="imagenet"`` (224x224) and their
width options. The ResNets are the CIFAR designs of He et al. (section 4.2), defined for
32x32 inputs only: an ImageNet stem would make them a different network, not a variant.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from pipeline.sources.zoo.mobilenet import mobilenet_v1, mobilenet_v2
from pipeline.sources.zoo.resnet import resnet20, resnet32, resnet44, resnet56
from pipeline.sources.zoo.shufflenet import shufflenet_v1, shufflenet_v2

ModelFactory = Callable[..., nn.Module]

_ZOO: dict[str, ModelFactory] = {
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet44": resnet44,
    "resnet56": resnet56,
    "mobilenet_v1": mobilenet_v1,
    "mobilenet_v2": mobilenet_v2,
    "shufflenet_v1": shufflenet_v1,
    "shufflenet_v2": shufflenet_v2,
}


def register(name: str, factory: ModelFactory) -> None:
    """Add a model factory under ``name`` (replacing none: names are unique)."""
    if name in _ZOO:
        raise ValueError(f"zoo model {name!r} is already registered")
    _ZOO[name] = factory


def names() -> list[str]:
    return sorted(_ZOO)


def build(name: str, **kwargs) -> nn.Module:
    try:
        factory = _ZOO[name]
    except KeyError:
        raise ValueError(
            f"unknown zoo model {name!r}; known models: {', '.join(names())}"
        ) from None
    return factory(**kwargs)
