"""Test-only launcher: inject the fault named by ``ICR_FAULT``, then run a tool as ``__main__``.

    ICR_FAULT=... python tests/fault_hooks.py tools/train.py -c CFG ...
    ICR_FAULT=... torchrun --nproc_per_node=2 tests/fault_hooks.py tools/train.py -c CFG ...

Faults (ICR_FAULT):
    block_save:N     the N-th ``torch.save`` of the process (1-based) writes half of its bytes,
                     flushes them, creates the file named by ICR_FAULT_MARK and sleeps (to be
                     killed while a checkpoint is being written)
    raise:R:S        the criterion raises RuntimeError on rank R at global step S
    oracle_eval      `oracle_update`: evaluation also sees each image's ground-truth boxes as
                     detections of score 1 (known, non-trivial metrics without training)

ICR_FAULT_PIDS (optional): a directory where each process writes its pid to <RANK>.pid.
"""

import io
import os
import runpy
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402


def block_save(n: int) -> None:
    real, calls = torch.save, [0]

    def save(obj, f, *args, **kwargs):
        calls[0] += 1
        if calls[0] != n:
            return real(obj, f, *args, **kwargs)
        buf = io.BytesIO()
        real(obj, buf, *args, **kwargs)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        open(os.environ["ICR_FAULT_MARK"], "w").close()
        while True:
            time.sleep(60)

    torch.save = save


def raise_in_criterion(rank: int, step: int) -> None:
    from rtdetrv2_icr.runtime import dist
    from rtdetrv2_icr.train.trainer import Trainer

    real_setup = Trainer.setup_model

    def setup(self):
        real_setup(self)
        forward = self.criterion.forward

        def faulty(outputs, targets, **kw):
            if dist.get_rank() == rank and kw.get("global_step") == step:
                raise RuntimeError(f"injected fault on rank {rank} at step {step}")
            return forward(outputs, targets, **kw)

        self.criterion.forward = faulty

    Trainer.setup_model = setup


def oracle_update(self, results) -> None:
    """`CocoEvaluator.update` with every ground-truth box of each image added in front of the
    model's detections, with score 1 (a sigmoid score of the model stays below 1)."""
    from rtdetrv2_icr.evaluate.evaluator import CocoEvaluator

    anns = {}
    for a in self.gt["annotations"]:
        anns.setdefault(int(a["image_id"]), []).append(a)
    merged = {}
    for img_id, r in results.items():
        gt = anns.get(int(img_id), [])
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in gt)]
        cats = [int(a["category_id"]) for a in gt]
        labels = cats if self.labels_are_category_ids else [self.category_to_label[c] for c in cats]
        merged[img_id] = {
            "boxes": torch.cat([torch.tensor(boxes).reshape(-1, 4), r["boxes"].float().cpu()]),
            "scores": torch.cat([torch.ones(len(gt)), r["scores"].float().cpu()]),
            "labels": torch.cat([torch.tensor(labels).long(), r["labels"].long().cpu()]),
        }
    CocoEvaluator._real_update(self, merged)


def use_oracle_eval() -> None:
    from rtdetrv2_icr.evaluate.evaluator import CocoEvaluator

    if not hasattr(CocoEvaluator, "_real_update"):
        CocoEvaluator._real_update = CocoEvaluator.update
    CocoEvaluator.update = oracle_update


def main() -> None:
    pids = os.environ.get("ICR_FAULT_PIDS")
    if pids:
        with open(os.path.join(pids, f"{os.environ.get('RANK', '0')}.pid"), "w") as f:
            f.write(str(os.getpid()))
    kind, *args = os.environ.get("ICR_FAULT", "none").split(":")
    if kind == "block_save":
        block_save(int(args[0]))
    elif kind == "raise":
        raise_in_criterion(int(args[0]), int(args[1]))
    elif kind == "oracle_eval":
        use_oracle_eval()
    elif kind != "none":
        raise SystemExit(f"unknown ICR_FAULT {kind!r}")
    tool = sys.argv[1]
    sys.argv = sys.argv[1:]
    runpy.run_path(tool, run_name="__main__")


if __name__ == "__main__":
    main()
