"""Small building blocks shared by the backbone, the hybrid encoder and UAV-DETR's neck.

Parameter names (``conv``, ``norm``, ``conv1``/``conv2``/``conv3``, ``bottlenecks``) are part of
the state_dict layout of RT-DETRv2 checkpoints and must not be renamed.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "FrozenBatchNorm2d",
    "freeze_batch_norm2d",
    "get_activation",
    "ConvNormLayer",
    "RepVggBlock",
    "CSPRepLayer",
    "MLP",
    "prior_prob_bias",
]


# ----------------------------------------------------------------------------------------------
# normalisation
# ----------------------------------------------------------------------------------------------
class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine terms, all stored as buffers (no parameters).

    The state_dict holds ``weight``, ``bias``, ``running_mean``, ``running_var``; a
    ``num_batches_tracked`` entry coming from a regular BatchNorm2d checkpoint is ignored.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # y = (x - mean) / sqrt(var + eps) * w + b, folded into one scale and one shift   [1, C, 1,
        # 1]
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def freeze_batch_norm2d(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` inside ``module`` (recursively) by a FrozenBatchNorm2d.

    The current statistics and affine terms are carried over. Returns the (possibly new) module, so
    ``m = freeze_batch_norm2d(m)`` also works when ``m`` itself is a BatchNorm2d.
    """
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        with torch.no_grad():
            if module.affine:
                frozen.weight.copy_(module.weight)
                frozen.bias.copy_(module.bias)
            if module.track_running_stats and module.running_mean is not None:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
        anchor = next(iter(list(module.parameters()) + list(module.buffers())), None)
        return frozen if anchor is None else frozen.to(anchor.device)
    for name, child in module.named_children():
        new_child = freeze_batch_norm2d(child)
        if new_child is not child:
            setattr(module, name, new_child)
    return module


# ----------------------------------------------------------------------------------------------
# activations
# ----------------------------------------------------------------------------------------------
_ACTIVATIONS = {
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
    "hardsigmoid": nn.Hardsigmoid,
}


def get_activation(act: Union[str, nn.Module, None], inplace: bool = True) -> nn.Module:
    """Activation module from a name (relu, silu/swish, gelu, leaky_relu, hardsigmoid,
    identity/none) or a module (returned as is). ``None`` gives ``nn.Identity``.

    Modules that support it are made in-place (as RT-DETRv2 does), except SiLU (see below).
    """
    if act is None:
        return nn.Identity()
    if isinstance(act, nn.Module):
        return act
    if not isinstance(act, str):
        raise TypeError(
            f"get_activation: expected a name, a module or None, got {type(act).__name__}"
        )
    key = act.lower()
    if key in ("identity", "none", "linear"):
        return nn.Identity()
    if key not in _ACTIVATIONS:
        raise ValueError(
            f"get_activation: unknown activation {act!r}; "
            f"known: {', '.join(sorted(_ACTIVATIONS))}, identity"
        )
    module = _ACTIVATIONS[key]()
    # SiLU stays out of place: an in-place silu_ makes autograd keep a copy of its input
    if hasattr(module, "inplace") and key not in ("silu", "swish"):
        module.inplace = inplace
    return module


# ----------------------------------------------------------------------------------------------
# convolutions
# ----------------------------------------------------------------------------------------------
class ConvNormLayer(nn.Module):
    """Conv2d -> BatchNorm2d -> activation. Padding defaults to 'same' for odd kernels."""

    def __init__(
        self,
        ch_in: int,
        ch_out: int,
        kernel_size: int,
        stride: int = 1,
        padding: Optional[int] = None,
        bias: bool = False,
        act=None,
    ):
        super().__init__()
        pad = (kernel_size - 1) // 2 if padding is None else padding
        self.conv = nn.Conv2d(ch_in, ch_out, kernel_size, stride, padding=pad, bias=bool(bias))
        self.norm = nn.BatchNorm2d(ch_out)
        self.act = get_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


def _fold_norm(layer: ConvNormLayer):
    """Kernel and bias of the single conv equal to ``layer.norm(layer.conv(x))`` (eval
    statistics)."""
    conv, norm = layer.conv, layer.norm
    inv_std = (norm.running_var + norm.eps).rsqrt()
    gain = norm.weight * inv_std  # [C_out]
    kernel = conv.weight * gain.view(-1, 1, 1, 1)  # [C_out, C_in, k, k]
    conv_bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
    bias = norm.bias + (conv_bias - norm.running_mean) * gain  # [C_out]
    return kernel, bias


class RepVggBlock(nn.Module):
    """RepVGG block: act(BN(conv3x3(x)) + BN(conv1x1(x))), stride 1.

    ``convert_to_deploy()`` folds both branches into one biased 3x3 conv ``self.conv`` that is used
    from then on (the training branches stay in place, so the state_dict keeps its keys and a second
    call re-fuses from them).
    """

    def __init__(self, ch_in: int, ch_out: int, act="relu"):
        super().__init__()
        self.ch_in, self.ch_out = ch_in, ch_out
        self.conv1 = ConvNormLayer(ch_in, ch_out, 3, 1, padding=1, act=None)
        self.conv2 = ConvNormLayer(ch_in, ch_out, 1, 1, padding=0, act=None)
        self.act = get_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "conv"):  # re-parameterised
            return self.act(self.conv(x))
        return self.act(self.conv1(x) + self.conv2(x))

    @torch.no_grad()
    def fused_kernel_bias(self):
        k3, b3 = _fold_norm(self.conv1)
        k1, b1 = _fold_norm(self.conv2)
        return k3 + F.pad(k1, [1, 1, 1, 1]), b3 + b1  # 1x1 kernel sits at the centre of the 3x3

    @torch.no_grad()
    def convert_to_deploy(self) -> None:
        kernel, bias = self.fused_kernel_bias()
        if not hasattr(self, "conv"):
            self.conv = nn.Conv2d(self.ch_in, self.ch_out, 3, 1, padding=1, bias=True).to(kernel)
        self.conv.weight.copy_(kernel)
        self.conv.bias.copy_(bias)


class CSPRepLayer(nn.Module):
    """CSP layer with RepVGG blocks (RT-DETR's fusion block, UAV-DETR's RepC3).

    x -> conv1 (1x1) -> num_blocks x RepVggBlock --+
    x -> conv2 (1x1) ------------------------------+-> sum -> conv3 (1x1, or identity when the
    hidden
                                                                width equals out_channels)
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_blocks: int = 3,
        expansion: float = 1.0,
        bias=None,
        act="silu",
    ):
        super().__init__()
        hidden = int(out_channels * expansion)
        self.conv1 = ConvNormLayer(in_channels, hidden, 1, 1, bias=bias, act=act)
        self.conv2 = ConvNormLayer(in_channels, hidden, 1, 1, bias=bias, act=act)
        self.bottlenecks = nn.Sequential(
            *[RepVggBlock(hidden, hidden, act=act) for _ in range(num_blocks)]
        )
        if hidden != out_channels:
            self.conv3 = ConvNormLayer(hidden, out_channels, 1, 1, bias=bias, act=act)
        else:
            self.conv3 = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.bottlenecks(self.conv1(x)) + self.conv2(x))


# ----------------------------------------------------------------------------------------------
# heads
# ----------------------------------------------------------------------------------------------
class MLP(nn.Module):
    """``num_layers`` linear layers with an activation between them (none after the last)."""

    def __init__(
        self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int, act: str = "relu"
    ):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims[:-1], dims[1:]))
        self.act = get_activation(act, inplace=False)

    def forward(self, x):
        for k, layer in enumerate(self.layers):
            x = layer(x)
            if k < len(self.layers) - 1:
                x = self.act(x)
        return x


def prior_prob_bias(prob: float = 0.01) -> float:
    """Bias b with sigmoid(b) = prob: classifiers start out predicting 'background' everywhere."""
    return -math.log((1.0 - prob) / prob)
