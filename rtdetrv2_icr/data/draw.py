"""Drawing boxes: ground truth beside predictions for TensorBoard, and annotated images for
tools/infer.py and tools/dataset_stats.py (one colour per class, child -> parent links)."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torchvision import tv_tensors
from torchvision.ops import box_convert
from torchvision.utils import draw_bounding_boxes, draw_keypoints, make_grid

__all__ = [
    "PALETTE",
    "class_colour",
    "draw_boxes",
    "draw_links",
    "draw_detections",
    "gt_vs_pred_grid",
    "target_boxes_xyxy",
]

# class 0 (plate) yellow, class 1 (vehicle) cyan, then further well-separated colours
PALETTE = ["#ffd400", "#00c8ff", "#ff3b30", "#34c759", "#af52de", "#ff9500", "#5856d6", "#ff2d55"]


def class_colour(label: int) -> str:
    return PALETTE[int(label) % len(PALETTE)]


def target_boxes_xyxy(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Target boxes as xyxy pixels of a (height, width) network input. `tv_tensors.BoundingBoxes`
    (val transforms usually stop there) carry their format and canvas; plain tensors are the
    normalised cxcywh that `ConvertBoxes(normalize=True)` produces."""
    if boxes.numel() == 0:
        return boxes.new_zeros((0, 4), dtype=torch.float32)
    if isinstance(boxes, tv_tensors.BoundingBoxes):
        ch, cw = boxes.canvas_size
        fmt = boxes.format.name.lower()
        xyxy = box_convert(boxes.as_subclass(torch.Tensor).float(), fmt, "xyxy")
        scale = torch.tensor([width / cw, height / ch, width / cw, height / ch], device=xyxy.device)
        return xyxy * scale
    xyxy = box_convert(boxes.float(), "cxcywh", "xyxy")
    return xyxy * torch.tensor(
        [width, height, width, height], device=xyxy.device, dtype=torch.float32
    )


def draw_boxes(
    image: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    class_names: Optional[Sequence[str]] = None,
    scores: Optional[torch.Tensor] = None,
    width: int = 1,
    font_size: Optional[int] = None,
) -> torch.Tensor:
    """image [3,H,W] float in [0,1] (or uint8), boxes [N,4] xyxy pixels -> uint8 [3,H,W]."""
    img = image.detach().cpu()
    if img.dtype != torch.uint8:
        img = (img.float().clamp(0, 1) * 255).round().to(torch.uint8)
    if boxes.numel() == 0:
        return img
    boxes = boxes.detach().cpu().float()
    h, w = img.shape[-2:]
    boxes = torch.stack(
        [
            boxes[:, 0].clamp(0, w - 1),
            boxes[:, 1].clamp(0, h - 1),
            boxes[:, 2].clamp(0, w - 1),
            boxes[:, 3].clamp(0, h - 1),
        ],
        dim=1,
    )
    labels = labels.detach().cpu().long()
    texts: Optional[List[str]] = None
    if class_names is not None:
        texts = []
        for i, lab in enumerate(labels.tolist()):
            name = class_names[lab] if 0 <= lab < len(class_names) else str(lab)
            texts.append(f"{name} {float(scores[i]):.2f}" if scores is not None else name)
    colours = [class_colour(lab) for lab in labels.tolist()]
    font = _default_font() if font_size else None
    return draw_bounding_boxes(
        img,
        boxes,
        labels=texts,
        colors=colours,
        width=width,
        font=font,
        font_size=font_size if font else None,
    )


def _default_font() -> Optional[str]:
    """A TrueType font that scales (PIL's bundled DejaVu where present), else None (PIL's
    small bitmap font)."""
    try:
        from PIL import ImageFont

        ImageFont.truetype("DejaVuSans.ttf", 10)
        return "DejaVuSans.ttf"
    except (ImportError, OSError):
        return None


def draw_links(
    image: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    parent_idx: torch.Tensor,
    width: int = 1,
) -> torch.Tensor:
    """A line from the centre of every box with ``parent_idx[i] >= 0`` to the centre of its
    parent box, in the child's class colour. image uint8 [3,H,W], boxes [N,4] xyxy -> uint8."""
    img = image
    boxes = boxes.detach().cpu().float().reshape(-1, 4)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    parent_idx = parent_idx.detach().cpu().long().reshape(-1)
    labels = labels.detach().cpu().long().reshape(-1)
    for i in torch.nonzero(parent_idx >= 0).flatten().tolist():
        pts = torch.stack([centres[i], centres[int(parent_idx[i])]])[None]  # [1, 2, 2]
        img = draw_keypoints(
            img,
            pts,
            connectivity=[(0, 1)],
            colors=class_colour(int(labels[i])),
            radius=max(1, width),
            width=width,
        )
    return img


def draw_detections(
    image: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    class_names: Optional[Sequence[str]] = None,
    scores: Optional[torch.Tensor] = None,
    parent_idx: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Boxes (with class name and score), and child -> parent links, on an image at its own
    resolution: line width and font grow with the image. image [3,H,W] -> uint8 [3,H,W]."""
    h, w = image.shape[-2:]
    width = max(1, round(max(h, w) / 400))
    out = draw_boxes(
        image,
        boxes,
        labels,
        class_names,
        scores,
        width=width,
        font_size=max(10, round(max(h, w) / 60)),
    )
    if parent_idx is not None and boxes.numel():
        out = draw_links(out, boxes, labels, parent_idx, width=width)
    return out


def gt_vs_pred_grid(
    items: Sequence[Tuple[torch.Tensor, dict, dict]],
    class_names: Optional[Sequence[str]] = None,
    score_thr: float = 0.3,
) -> torch.Tensor:
    """items: (image [3,H,W], gt {'boxes' xyxy px, 'labels'}, pred {'boxes','labels','scores'}).

    Returns one uint8 grid, a row per image: ground truth left, predictions (score >= thr) right.
    """
    tiles = []
    for image, gt, pred in items:
        tiles.append(draw_boxes(image, gt["boxes"], gt["labels"], class_names))
        keep = pred["scores"] >= score_thr
        tiles.append(
            draw_boxes(
                image, pred["boxes"][keep], pred["labels"][keep], class_names, pred["scores"][keep]
            )
        )
    return make_grid(tiles, nrow=2, padding=2, pad_value=255)
