"""Contrastive denoising (CDN) queries for training.

Ground-truth objects, noised, are fed to the decoder as extra queries that it must reconstruct.
The ``M`` (max objects per image in the batch) ground truths are laid out twice per group:
a *positive* half (small box noise, to be reconstructed) and a *negative* half (larger noise, to be
classified as background). ``G = max(1, num_denoising // M)`` groups are stacked:

    query index:   | group 0: pos(M) neg(M) | group 1: pos(M) neg(M) | ... | matching queries (Q) |

Images with fewer than ``M`` objects fill their slots with a padding class (embedding row
``num_classes``, which is zero and never trained) and a zero box.

Self-attention mask (True = may NOT attend): matching queries never see denoising queries (they
would leak the ground truth), and a denoising group sees only itself and the matching queries.

Batches without any object: we still build one group (M = 1, a padded positive/negative slot
per image with a valid dummy box in the centre) instead of skipping denoising. Every batch then
runs the same modules (the class embedding and the denoising split), so under DDP all ranks
reduce the same set of gradients and none waits forever; ``dn_positive_idx`` is empty for every
image, so the slots never enter a loss. This is the behaviour of upstream's fix for the same hang.
"""

from typing import Dict, List, NamedTuple, Optional, Sequence

import torch
import torch.nn as nn

from rtdetrv2_icr.ops.boxes import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh, inverse_sigmoid

__all__ = ["DenoisingGroup", "build_denoising_group", "denoising_attn_mask", "check_targets"]

# box given to the padded slots of an object-free batch: centre of the image, 10 % of its size
_EMPTY_BATCH_BOX = (0.5, 0.5, 0.1, 0.1)


class DenoisingGroup(NamedTuple):
    content: torch.Tensor  # [B, N_dn, C]  class embeddings of the (noised) labels
    ref_unact: torch.Tensor  # [B, N_dn, 4]  noised boxes, inverse-sigmoid space
    attn_mask: torch.Tensor  # [N_dn + Q, N_dn + Q] bool, True = blocked
    meta: Dict  # dn_positive_idx, dn_num_group, dn_num_split


def check_targets(targets, num_classes: int) -> None:
    """Validate the keys the model reads: ``labels`` int [N] in [0, num_classes), ``boxes``
    [N, 4]."""
    if targets is None:
        raise ValueError(
            "RTDETRTransformerv2: training with num_denoising > 0 needs `targets` "
            "(a list of dicts with 'labels' and 'boxes'); got None"
        )
    for i, t in enumerate(targets):
        for key in ("labels", "boxes"):
            if key not in t:
                raise ValueError(f"targets[{i}] has no {key!r} key (keys: {sorted(t)})")
        labels, boxes = t["labels"], t["boxes"]
        if (
            labels.dim() != 1
            or boxes.dim() != 2
            or boxes.shape[-1] != 4
            or boxes.shape[0] != labels.shape[0]
        ):
            raise ValueError(
                f"targets[{i}]: expected labels [N] and boxes [N, 4] (cxcywh), got "
                f"labels {tuple(labels.shape)} and boxes {tuple(boxes.shape)}"
            )
    labels = torch.cat([t["labels"].reshape(-1) for t in targets]) if targets else None
    if labels is None or not labels.numel():
        return
    bad = ((labels < 0) | (labels >= num_classes)).any()
    if labels.device.type != "cpu":  # checked on the device, without waiting for it
        torch._assert_async(~bad, f"target labels must lie in [0, {num_classes})")
        return
    if bool(bad):
        for i, t in enumerate(targets):  # name the image that fails
            lab = t["labels"]
            if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= num_classes):
                raise ValueError(
                    f"targets[{i}]['labels'] must lie in [0, {num_classes}), got "
                    f"min {int(lab.min())} max {int(lab.max())}"
                )


def denoising_attn_mask(
    num_dn: int, group_size: int, num_queries: int, device=None
) -> torch.Tensor:
    """[num_dn + Q, num_dn + Q] bool mask, True where attention is blocked."""
    total = num_dn + num_queries
    mask = torch.zeros(total, total, dtype=torch.bool, device=device)
    mask[num_dn:, :num_dn] = True  # matching queries don't see denoising ones
    group = torch.arange(num_dn, device=device) // group_size
    mask[:num_dn, :num_dn] = group[:, None] != group[None, :]  # groups don't see each other
    return mask


def build_denoising_group(
    targets: Sequence[Dict[str, torch.Tensor]],
    num_classes: int,
    num_queries: int,
    class_embed: nn.Embedding,
    num_denoising: int = 100,
    label_noise_ratio: float = 0.5,
    box_noise_scale: float = 1.0,
) -> Optional[DenoisingGroup]:
    """Noised ground-truth queries for one batch; None when ``num_denoising <= 0``.

    targets: per image a dict with ``labels`` (int64 [N]) and ``boxes`` (cxcywh in [0, 1], [N, 4]);
    other keys are ignored.
    """
    if num_denoising <= 0:
        return None
    device = class_embed.weight.device
    counts = [int(t["labels"].shape[0]) for t in targets]
    b = len(targets)
    empty_batch = max(counts) == 0
    m = 1 if empty_batch else max(counts)  # slots per half-group
    groups = 1 if empty_batch else max(1, num_denoising // m)
    n_dn = 2 * m * groups

    # one half-group, padded: [B, M]
    labels = torch.full((b, m), num_classes, dtype=torch.long, device=device)
    boxes = torch.zeros(b, m, 4, device=device)
    real = torch.zeros(b, m, dtype=torch.bool, device=device)
    if empty_batch:
        boxes[:] = torch.tensor(_EMPTY_BATCH_BOX, device=device)
    for i, (t, n) in enumerate(zip(targets, counts)):
        if n:
            labels[i, :n] = t["labels"].to(device)
            boxes[i, :n] = t["boxes"].to(device=device, dtype=boxes.dtype)
            real[i, :n] = True

    # repeat to [B, N_dn]: each group is positives then negatives
    labels = labels.repeat(1, 2 * groups)
    boxes = boxes.repeat(1, 2 * groups, 1)
    real = real.repeat(1, 2 * groups)
    is_negative = (torch.arange(n_dn, device=device) // m) % 2 == 1  # [N_dn]
    negative = is_negative.to(boxes.dtype)[None, :, None].expand(b, n_dn, 1)  # [B, N_dn, 1]

    if label_noise_ratio > 0:
        # half of the noise ratio: a flipped label can land on the true class again
        flip = torch.rand(labels.shape, device=device) < label_noise_ratio * 0.5
        random_label = torch.randint(
            0, num_classes, labels.shape, dtype=labels.dtype, device=device
        )
        labels = torch.where(flip & real, random_label, labels)

    if box_noise_scale > 0:
        # move every corner by up to half the box size (positives) or 1..2 times it (negatives)
        corners = box_cxcywh_to_xyxy(boxes)
        half_size = (boxes[..., 2:] * 0.5).repeat(1, 1, 2) * box_noise_scale
        sign = torch.randint(0, 2, boxes.shape, device=device).to(boxes.dtype) * 2.0 - 1.0
        magnitude = torch.rand(boxes.shape, device=device) + negative
        corners = (corners + sign * magnitude * half_size).clamp(0.0, 1.0)
        boxes = box_xyxy_to_cxcywh(corners)
    ref_unact = inverse_sigmoid(boxes)

    # positives of image i, as indices into the denoising queries: group g, slot j -> 2*M*g + j
    slot = torch.arange(groups, device=device)[:, None] * (2 * m)
    positive_idx: List[torch.Tensor] = [
        (slot + torch.arange(n, device=device)[None, :]).flatten() for n in counts
    ]

    meta = {
        "dn_positive_idx": positive_idx,
        "dn_num_group": groups,
        "dn_num_split": [n_dn, num_queries],
    }
    return DenoisingGroup(
        content=class_embed(labels),
        ref_unact=ref_unact,
        attn_mask=denoising_attn_mask(n_dn, 2 * m, num_queries, device),
        meta=meta,
    )
