"""Non-uniform quantisation: per-layer k-means weight sharing (Han et al., "Deep
Compression", ICLR 2016, section 3).

Each layer's weights are clustered into 2^b shared values (1-D k-means, initialised
linearly over [min, max], by density (quantiles of the weight CDF) or at random weights),
every weight becomes an index into that codebook, and the codebook is fine-tuned: the
gradient of a shared value is the sum of the gradients of the weights that use it. Pruned
weights (zeros left by ``sparsity``) stay zero and outside the clusters.

The deployable file stores the codebook (float32) and b-bit indices, Huffman-coded by
default, as are the sparse positions when chained after sparsification: sparsity ->
nonuniform is Deep Compression's pipeline. Decoding yields exactly the same weights.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from hpo.space import Categorical, Dimension
from learners.aids import Aids, Probe
from learners.base import Context, LearnerDefaults, ModelInfo, Stage
from learners.bitwidth import (
    bit_dimensions,
    bits_aids,
    check_bit_settings,
    first_parametrization,
    layer_bits,
    layer_weight,
    weight_layers,
)
from learners.finetune import finish_finetune_
from learners.formats.packed import PackedModel, TensorCodec, unwrap

INITS = ("linear", "density", "random")


def init_centroids(values: torch.Tensor, k: int, method: str, seed: int = 0) -> torch.Tensor:
    """Initial codebook of ``k`` values for the 1-D sample ``values``."""
    values = values.detach().flatten().double()
    if values.numel() == 0:
        return torch.zeros(k, dtype=torch.float64)
    if method == "linear":
        return torch.linspace(float(values.min()), float(values.max()), k, dtype=torch.float64)
    if method == "density":
        q = (torch.arange(k, dtype=torch.float64) + 0.5) / k
        return torch.quantile(values, q)
    if method == "random":
        gen = torch.Generator().manual_seed(seed)
        pick = torch.randperm(values.numel(), generator=gen)[: min(k, values.numel())]
        out = values[pick].sort().values
        if out.numel() < k:
            out = torch.cat([out, out[-1:].expand(k - out.numel())])
        return out
    raise ValueError(f"unknown init {method!r}; choose from {INITS}")


def assign(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid for each value (``centroids`` sorted ascending)."""
    mids = (centroids[1:] + centroids[:-1]) / 2
    return torch.bucketize(values, mids)


def kmeans_1d(
    values: torch.Tensor, centroids: torch.Tensor, iterations: int = 50
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's algorithm in one dimension; empty clusters keep their centroid."""
    x = values.detach().flatten().double()
    c = centroids.double().sort().values.clone()
    k = c.numel()
    idx = assign(x, c)
    for _ in range(iterations):
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, idx, x)
        counts = torch.bincount(idx, minlength=k).double()
        c = torch.where(counts > 0, sums / counts.clamp_min(1), c).sort().values
        new_idx = assign(x, c)
        if torch.equal(new_idx, idx):
            break
        idx = new_idx
    return c, idx


class _SharedWeights(nn.Module):
    """Parametrisation weight = codebook[index] on kept positions, 0 elsewhere. Autograd's
    gather backward sums the weight gradients of each cluster into its codebook entry."""

    index: torch.Tensor
    mask: torch.Tensor

    def __init__(self, codebook: torch.Tensor, index: torch.Tensor, mask: torch.Tensor) -> None:
        super().__init__()
        self.codebook = nn.Parameter(codebook)
        self.register_buffer("index", index)
        self.register_buffer("mask", mask)

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        shared = self.codebook[self.index]
        return torch.where(self.mask, shared, torch.zeros_like(shared))


@dataclass(frozen=True)
class NonUniformConfig:
    """bits: fixed width for every layer, else the search picks one (``granularity``
    "global") or one per layer ("layer") in [min_bits, max_bits], lowered to ``avg_bits``
    (size-weighted) when a budget is set. ``inits`` lists the initialisations the search
    may choose from. ``huffman`` entropy-codes indices and positions. ``recalibrate_bn``
    re-estimates BatchNorm statistics for the shared weights after fine-tuning."""

    bits: int | None = None
    min_bits: int = 2
    max_bits: int = 8
    granularity: str = "global"
    avg_bits: float | None = None
    inits: tuple[str, ...] = ("linear",)
    huffman: bool = True
    iterations: int = 50
    exclude: tuple[str, ...] = ()
    recalibrate_bn: bool = True

    def __post_init__(self) -> None:
        check_bit_settings(self, lowest=1)
        object.__setattr__(self, "inits", tuple(self.inits))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        bad = set(self.inits) - set(INITS)
        if bad or not self.inits:
            raise ValueError(f"unknown init {sorted(bad)}; choose from {INITS}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def share_weights_(
    model: nn.Module,
    bits: dict[str, int],
    init: str,
    codecs: dict[str, TensorCodec],
    iterations: int = 50,
    seed: int = 0,
) -> dict[str, _SharedWeights]:
    """Cluster each named layer's weight in place and parametrise it by its codebook.
    Zeros of layers stored sparse stay zero (they are not clustered)."""
    layers = dict(weight_layers(model))
    shared: dict[str, _SharedWeights] = {}
    for name, b in bits.items():
        module = layers[name]
        weight = layer_weight(module)
        sparse = codecs.get(f"{name}.weight", TensorCodec()).sparse
        mask = (weight != 0) if sparse else torch.ones_like(weight, dtype=torch.bool)
        kept = weight[mask]
        centroids, _ = kmeans_1d(kept, init_centroids(kept, 1 << b, init, seed), iterations)
        index = assign(weight.detach().double(), centroids)
        param = _SharedWeights(centroids.float(), index, mask)
        parametrize.register_parametrization(module, "weight", param, unsafe=True)
        shared[name] = param
    return shared


@torch.no_grad()
def bake_(model: nn.Module, names: list[str]) -> None:
    """Replace each parametrisation by its plain weight (exact codebook values, +0.0)."""
    layers = dict(weight_layers(model))
    for name in names:
        module = layers[name]
        p = first_parametrization(module)
        value = torch.where(p.mask, p.codebook[p.index], torch.zeros((), dtype=p.codebook.dtype))
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        layer_weight(module).copy_(value)


def codebook_codecs(
    bits: dict[str, int], codecs: dict[str, TensorCodec], huffman: bool
) -> dict[str, TensorCodec]:
    out = dict(codecs)
    for name, b in bits.items():
        key = f"{name}.weight"
        sparse = codecs.get(key, TensorCodec()).sparse
        out[key] = TensorCodec(sparse=sparse, values="codebook", bits=b, huffman=huffman)
    return out


class NonUniformQuantization(LearnerDefaults):
    """Learner ``nonuniform``: k-means weight sharing, codebook fine-tuning, Huffman."""

    name = "nonuniform"
    stage: ClassVar[Stage] = Stage.QUANTIZATION
    keeps_float: ClassVar[bool] = False  # codebook indices: a later learner would undo them
    speeds_up: tuple[str, ...] | None = ()  # decoded to float weights: bytes saved, not time

    def __init__(self, config: NonUniformConfig | None = None, **options: Any) -> None:
        self.config = config or NonUniformConfig(**options)

    def space(self, info: ModelInfo) -> list[Dimension]:
        c = self.config
        dims = bit_dimensions(c, info.model)
        if len(c.inits) > 1:
            dims.append(Categorical("init", c.inits))
        return dims

    def prepare(self, info: ModelInfo, probe: Probe) -> Aids:
        """Its rule start and predictor over the bit widths (``bitwidth.bits_aids``)."""
        return bits_aids(self, self.config, info, probe)

    def compress(self, model: nn.Module, params: dict[str, Any], ctx: Context) -> nn.Module:
        c = self.config
        inner, codecs = unwrap(model)
        dense = copy.deepcopy(inner).eval()
        sizes = {n: layer_weight(m).numel() for n, m in weight_layers(dense, c.exclude)}
        bits = layer_bits(c, params, sizes)
        init = str(params.get("init", c.inits[0]))
        share_weights_(dense, bits, init, codecs, c.iterations, ctx.seed)
        try:
            curve = ctx.finetune(dense)
        finally:
            bake_(dense, list(bits))
        recalibrated = finish_finetune_(dense, curve, ctx, self.name, c.recalibrate_bn)
        ctx.records[self.name] = {
            "config": c.to_dict(),
            "params": dict(params),
            "bits": bits,
            "init": init,
            "bn_recalibration_batches": recalibrated,
        }
        return PackedModel(dense.eval(), codebook_codecs(bits, codecs, c.huffman))

    def replay(self, model: nn.Module, record: dict[str, Any], ctx: Context) -> nn.Module:
        """k-means weight sharing of a copy of ``model`` with the recorded per-layer bits
        and initialisation, seeded by ``ctx.seed`` (no codebook fine-tuning: the trained
        codebooks are in the file)."""
        config = NonUniformConfig(**record["config"])
        inner, codecs = unwrap(model)
        dense = copy.deepcopy(inner).eval()
        bits = {n: int(b) for n, b in record["bits"].items()}
        share_weights_(dense, bits, record["init"], codecs, config.iterations, ctx.seed)
        bake_(dense, list(bits))
        return PackedModel(dense, codebook_codecs(bits, codecs, config.huffman))


LEARNER = NonUniformQuantization
