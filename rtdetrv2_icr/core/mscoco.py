"""The COCO-2017 detection categories: 80 classes whose ids (1..90) have gaps.

Upstream RT-DETRv2's ``remap_mscoco_category`` maps contiguous labels 0..79 to these ids; the COCO
reader and the post-processor both use this one table.
"""

from typing import Dict

__all__ = [
    "MSCOCO_CATEGORY_IDS",
    "MSCOCO_CATEGORIES",
    "mscoco_category_to_label",
    "mscoco_label_to_category",
]

# The 80 COCO-2017 detection categories: (category id, name). Ids have gaps (12, 26, ...).
MSCOCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
_MSCOCO_NAMES = [
    n.strip()
    for n in (
        "person, bicycle, car, motorcycle, airplane, bus, train, truck, boat, traffic light, "
        "fire hydrant, stop sign, parking meter, bench, bird, cat, dog, horse, sheep, cow, "
        "elephant, bear, zebra, giraffe, backpack, umbrella, handbag, tie, suitcase, frisbee, "
        "skis, snowboard, sports ball, kite, baseball bat, baseball glove, skateboard, "
        "surfboard, tennis racket, bottle, wine glass, cup, fork, knife, spoon, bowl, banana, "
        "apple, sandwich, orange, broccoli, carrot, hot dog, pizza, donut, cake, chair, "
        "couch, potted plant, bed, dining table, toilet, tv, laptop, mouse, remote, keyboard, "
        "cell phone, microwave, oven, toaster, sink, refrigerator, book, clock, vase, "
        "scissors, teddy bear, hair drier, toothbrush"
    ).split(",")
]
MSCOCO_CATEGORIES: Dict[int, str] = dict(zip(MSCOCO_CATEGORY_IDS, _MSCOCO_NAMES))
mscoco_category_to_label: Dict[int, int] = {c: i for i, c in enumerate(MSCOCO_CATEGORY_IDS)}
mscoco_label_to_category: Dict[int, int] = {i: c for c, i in mscoco_category_to_label.items()}
assert len(MSCOCO_CATEGORIES) == 80 and len(_MSCOCO_NAMES) == 80
