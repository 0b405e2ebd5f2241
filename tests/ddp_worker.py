"""A training run under torchrun with two test hooks, started by tests/test_engine_ddp.py.

1. A strict stand-in for NCCL's rule around every ``torch.distributed`` collective: a tensor
   collective must be called from the library's one home of collectives
   (``rtdetrv2_icr.core.collectives``), with its tensors on the group's declared device. On
   gloo a CPU tensor would pass anyway; under NCCL it ends the run, so here any other caller
   fails the run at once, naming itself.
2. ``--delay-save S``: rank 0 sleeps S seconds before each checkpoint write, so a rank that
   reads best.pth / last.pth without waiting for the write finds the old file or none. Each rank
   writes the digest of the weights it loaded for the final evaluation to ``digest<rank>.json``.

    python -m torch.distributed.run --nproc_per_node=2 tests/ddp_worker.py CONFIG [--delay-save S]
"""

import argparse
import hashlib
import inspect
import json
import os
import sys
import time

import torch
import torch.distributed as tdist

HOME = "rtdetrv2_icr.core.collectives"
TENSOR_OPS = (
    "all_reduce",
    "reduce",
    "broadcast",
    "all_gather",
    "all_gather_into_tensor",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "all_to_all",
    "all_to_all_single",
    "gather",
    "scatter",
)
OBJECT_OPS = ("all_gather_object", "broadcast_object_list", "gather_object", "scatter_object_list")


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


def install_strict_collectives(log_path):
    from rtdetrv2_icr.core import collectives

    seen = []

    def strict(name, fn):
        def wrapper(*args, **kwargs):
            caller = inspect.currentframe().f_back.f_globals.get("__name__", "?")
            if caller != HOME:
                raise RuntimeError(f"torch.distributed.{name} called from {caller}, not {HOME}")
            dev = collectives.collective_device()
            for t in _tensors(list(args) + list(kwargs.values())):
                if t.device != dev:
                    raise RuntimeError(f"{name}: a tensor on {t.device}; the group's is {dev}")
            seen.append(name)
            return fn(*args, **kwargs)

        return wrapper

    for name in TENSOR_OPS + OBJECT_OPS:
        if hasattr(tdist, name):
            setattr(tdist, name, strict(name, getattr(tdist, name)))
    return seen


def install_delayed_save(delay, out_dir):
    from rtdetrv2_icr.runtime import checkpoint

    save, load = checkpoint.save_atomic, checkpoint.load_eval_weights

    def slow_save(obj, path):
        time.sleep(delay)
        save(obj, path)

    def recorded_load(path, model, ema=None):
        load(path, model, ema)
        weights = (ema.module if ema is not None else model).state_dict()
        h = hashlib.sha256()
        for k in sorted(weights):
            h.update(k.encode())
            h.update(weights[k].detach().cpu().contiguous().numpy().tobytes())
        rank = tdist.get_rank() if tdist.is_initialized() else 0
        with open(os.path.join(out_dir, f"digest{rank}.json"), "w") as f:
            json.dump({"path": os.path.basename(path), "sha256": h.hexdigest()}, f)

    checkpoint.save_atomic = slow_save
    checkpoint.load_eval_weights = recorded_load


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--out", required=True)
    ap.add_argument("--delay-save", type=float, default=0.0)
    ap.add_argument("--eval-split", default="test")
    ap.add_argument("-u", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides")
    args = ap.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    os.makedirs(args.out, exist_ok=True)
    seen = install_strict_collectives(args.out)
    if args.delay_save > 0:
        install_delayed_save(args.delay_save, args.out)
    from rtdetrv2_icr.core.yaml_utils import parse_cli
    from rtdetrv2_icr.train.launch import train_from_config

    overrides = {**parse_cli(args.u), "device": "cpu", "output_dir": args.out}
    train_from_config(args.config, overrides, eval_split=args.eval_split)
    rank = int(os.environ.get("RANK", 0))
    with open(os.path.join(args.out, f"collectives{rank}.json"), "w") as f:
        json.dump(sorted(set(seen)), f)


if __name__ == "__main__":
    main()
