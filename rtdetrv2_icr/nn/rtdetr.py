"""The RT-DETR detector: backbone -> hybrid encoder -> transformer decoder."""

from typing import Dict, List, Optional

import torch
import torch.nn as nn

from rtdetrv2_icr.core.registry import register

__all__ = ["RTDETR"]


@register()
class RTDETR(nn.Module):
    __inject__ = ["backbone", "encoder", "decoder"]

    def __init__(self, backbone: nn.Module, encoder: nn.Module, decoder: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.decoder = decoder
        self.encoder = encoder

    def forward(self, images: torch.Tensor, targets: Optional[List[Dict]] = None):
        """images [B, 3, H, W] -> the decoder's output dict (see ``nn/decoder.py``).

        ``targets`` (training only): per image ``labels`` int64 [N] and ``boxes`` cxcywh in [0, 1].

        In training the images (and the conv weights, see ``train``) go channels-last: faster
        convolutions and gradients on CPUs and GPUs. In eval the layouts are upstream's, so the
        outputs equal upstream's bit for bit.
        """
        if self.training:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.decoder(self.encoder(self.backbone(images)), targets)

    def train(self, mode: bool = True) -> "RTDETR":
        """Also lay the convolution weights out channels-last in training and back in eval (the
        same Parameter objects: optimiser state and EMA are unaffected).

        The strides are set exactly, not just "contiguous in that format": a 1x1 kernel is both,
        but its gradient comes back with channels-last strides, and a gradient whose strides
        differ from its weight's costs DDP a copy into its bucket every step."""
        super().train(mode)
        layout = torch.channels_last if mode else torch.contiguous_format
        for p in self.parameters():
            if p.dim() != 4:
                continue
            laid = torch.empty_like(p.data, memory_format=layout)
            if p.stride() != laid.stride():
                p.data = laid.copy_(p.data)
        return self

    def deploy(self) -> "RTDETR":
        """Switch to inference with re-parameterised blocks (e.g. RepVGG); returns self.

        A part with its own ``deploy()`` converts itself; for the others, every sub-module that
        offers ``convert_to_deploy()`` is converted.
        """
        self.eval()
        for part in (self.backbone, self.encoder, self.decoder):
            if callable(getattr(part, "deploy", None)):
                part.deploy()
                continue
            for m in part.modules():
                if callable(getattr(m, "convert_to_deploy", None)):
                    m.convert_to_deploy()
        return self
