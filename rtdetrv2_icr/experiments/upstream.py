"""Step time of our RT-DETRv2-R18 (ICR on) against upstream RT-DETRv2-R18 (baseline criterion).

Both models are built in one process: upstream's from its own code (the ``rtdetrv2_pytorch``
directory of a checkout of https://github.com/lyuwenyu/RT-DETR, imported at run time from
``--upstream``), ours from ``configs/rtdetrv2/rtdetrv2_r18vd_svmlp_icr.yml``. Upstream's randomly
initialised weights are loaded into ours (state_dict keys and shapes are equal by design), both
get the same random images and the same random plate-inside-vehicle targets, and per round we
time, ours first then upstream (``eval_spatial_size`` is set to the input size on both sides, as
upstream's eval mode requires):

    train  forward + criterion + backward + optimizer step (model.train(); each side's own
           optimizer section, AdamW with its param groups; --optimizer plain for a bare AdamW)
    eval   forward + postprocessor under torch.no_grad()   (model.eval())

The global RNG is re-seeded before every forward so both sides draw comparable denoising noise.
Reported: the median wall time of each side and the median of the per-round ratios
ours / upstream (< 1: we are faster), as a markdown table and optionally JSON; the same ratio
from process CPU time is given beside it (it moves less when other jobs share the machine).
Before the timed rounds the eval outputs of both models on the same weights are compared (they
should be equal). ``--amp`` runs the training forward of both sides under bf16 autocast, as
both training engines do on a CPU with ``use_amp``.

    python tools/compare_upstream.py --upstream /path/to/RT-DETR/rtdetrv2_pytorch \\
        --sizes 320 640 --batch 2 --rounds 5 --threads 2 --json compare.json

Timings depend on the machine and on whatever else runs on it: measure on a quiet machine.
Nothing of upstream is copied into this project; the tests never need it.
"""

from __future__ import annotations

import importlib
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Tuple

import torch

from rtdetrv2_icr.core import YAMLConfig
from rtdetrv2_icr.experiments.targets import random_pair_targets
from rtdetrv2_icr.train.builders import build_optimizer
from rtdetrv2_icr.train.step import train_step
from rtdetrv2_icr.train.updater import Updater

__all__ = ["compare", "markdown", "summarize", "OUR_CONFIG"]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

OUR_CONFIG = os.path.join(REPO, "configs", "rtdetrv2", "rtdetrv2_r18vd_svmlp_icr.yml")
UPSTREAM_CONFIG = os.path.join("configs", "rtdetrv2", "rtdetrv2_r18vd_120e_coco.yml")
NUM_CLASSES = 2


# ---- upstream -------------------------------------------------------------------------------
def resolve_upstream(path: str) -> str:
    """The ``rtdetrv2_pytorch`` directory from ``path`` (that directory or the repository root)."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        raise SystemExit(
            f"compare_upstream: --upstream {path} is not a directory; give the "
            f"rtdetrv2_pytorch directory of an RT-DETR checkout"
        )
    for candidate in (path, os.path.join(path, "rtdetrv2_pytorch")):
        if os.path.isfile(os.path.join(candidate, UPSTREAM_CONFIG)) and os.path.isfile(
            os.path.join(candidate, "src", "core", "yaml_config.py")
        ):
            return candidate
    raise SystemExit(
        f"compare_upstream: --upstream {path} is not upstream's rtdetrv2_pytorch "
        f"directory (expected {UPSTREAM_CONFIG} and src/core/yaml_config.py in it)"
    )


def import_upstream(root: str):
    """Import upstream's package (named ``src``) from ``root``; returns its YAMLConfig class."""
    loaded = sys.modules.get("src")
    if loaded is not None and not os.path.abspath(getattr(loaded, "__file__", "")).startswith(root):
        raise SystemExit(
            f"compare_upstream: another package named 'src' is already imported "
            f"({loaded.__file__}); run from a clean interpreter"
        )
    sys.path.insert(0, root)
    try:
        importlib.import_module("src")  # registers upstream's components
        return importlib.import_module("src.core").YAMLConfig
    except ImportError as e:
        raise SystemExit(
            f"compare_upstream: importing upstream from {root} failed ({e}); "
            f"install the packages its requirements.txt lists"
        ) from e


def build_upstream(upstream_cfg_cls, root: str, eval_size):
    """Upstream's config object (model, criterion, postprocessor, optimizer built lazily)."""
    return upstream_cfg_cls(
        os.path.join(root, UPSTREAM_CONFIG),
        num_classes=NUM_CLASSES,
        remap_mscoco_category=False,
        eval_spatial_size=eval_size,
        PResNet={"pretrained": False},
    )


def build_ours(eval_size):
    return YAMLConfig(OUR_CONFIG, PResNet={"pretrained": False}, eval_spatial_size=eval_size)


def make_optimizer(cfg, model, how: str, lr: float):
    """'config': the side's own optimizer section (param groups and AdamW options, as its
    training would use); 'plain': torch AdamW(lr) over all trainable parameters."""
    if how == "config":
        if isinstance(cfg, YAMLConfig):  # ours: train/builders.py builds the training pieces
            return build_optimizer(cfg, model)
        return cfg.optimizer
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)


def copy_weights(src: torch.nn.Module, dst: torch.nn.Module) -> int:
    """Load ``src``'s state_dict into ``dst`` after checking that keys and shapes are equal."""
    a, b = src.state_dict(), dst.state_dict()
    only_up, only_ours = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    shapes = [k for k in set(a) & set(b) if a[k].shape != b[k].shape]
    if only_up or only_ours or shapes:
        lines = [
            f"only upstream: {only_up[:10]}{' ...' if len(only_up) > 10 else ''}",
            f"only ours: {only_ours[:10]}{' ...' if len(only_ours) > 10 else ''}",
            "shape differs: "
            + ", ".join(
                f"{k} {tuple(a[k].shape)} vs {tuple(b[k].shape)}" for k in sorted(shapes)[:10]
            ),
        ]
        raise SystemExit(
            "compare_upstream: upstream's state_dict does not fit ours:\n  " + "\n  ".join(lines)
        )
    dst.load_state_dict(a, strict=True)
    return len(a)


# ---- one side -------------------------------------------------------------------------------
class Side:
    """A model, its criterion, postprocessor and AdamW, with timed train and eval steps.
    Each step returns (wall seconds, process CPU seconds)."""

    def __init__(self, name: str, model, criterion, post, opt, amp: bool = False):
        self.name, self.model, self.criterion, self.post = name, model, criterion, post
        self.updater, self.amp, self.ours = Updater(opt), amp, name == "ours"

    def train_step(self, images, targets, seed: int) -> Tuple[float, float]:
        """forward + criterion + backward + optimizer step: the library's one `train_step`.
        With --amp each side does what its own engine does on a CPU with use_amp: a bf16
        autocast forward, the criterion outside autocast (ours on fp32 copies of the outputs,
        upstream's on the raw outputs, as its engine hands them over)."""
        self.model.train()
        self.criterion.train()
        torch.manual_seed(seed)
        t0, c0 = time.perf_counter(), time.process_time()
        amp = torch.bfloat16 if self.amp else None
        train_step(self.model, self.criterion, self.updater, images, targets, amp, cast=self.ours)
        return time.perf_counter() - t0, time.process_time() - c0

    def eval_outputs(self, images, sizes, seed: int):
        self.model.eval()
        torch.manual_seed(seed)
        with torch.no_grad():
            out = self.model(images)
            return out, self.post(out, sizes)

    def eval_step(self, images, sizes, seed: int) -> Tuple[float, float]:
        self.model.eval()
        t0, c0 = time.perf_counter(), time.process_time()
        self.eval_outputs(images, sizes, seed)
        return time.perf_counter() - t0, time.process_time() - c0


def eval_parity(ours: Side, up: Side, images, sizes) -> Dict[str, float]:
    """Max |ours - upstream| of the eval outputs on equal weights (0 when identical)."""
    o_raw, o_det = ours.eval_outputs(images, sizes, 0)
    u_raw, u_det = up.eval_outputs(images, sizes, 0)
    diff = {k: (o_raw[k] - u_raw[k]).abs().max().item() for k in ("pred_logits", "pred_boxes")}
    for k in ("scores", "boxes"):
        diff[f"post_{k}"] = max((a[k] - b[k]).abs().max().item() for a, b in zip(o_det, u_det))
    diff["post_labels_equal"] = all(
        torch.equal(a["labels"], b["labels"]) for a, b in zip(o_det, u_det)
    )
    return diff


def interleave(
    steps: Dict[str, Tuple[Callable[[int], Tuple[float, float]], ...]], rounds: int, warmup: int
) -> Dict[str, Dict[str, List[Tuple[float, float]]]]:
    """Per round and phase: ours, then upstream. Returns {phase: {ours: [...], upstream: [...]}}
    of (wall, cpu) seconds."""
    times = {phase: {"ours": [], "upstream": []} for phase in steps}
    for r in range(warmup + rounds):
        for phase, (ours_fn, up_fn) in steps.items():
            seed = 1000 + r
            t_ours, t_up = ours_fn(seed), up_fn(seed)
            if r >= warmup:
                times[phase]["ours"].append(t_ours)
                times[phase]["upstream"].append(t_up)
    return times


def summarize(t: Dict[str, List[Tuple[float, float]]]) -> Dict[str, object]:
    """Medians (ms) per side and the median of per-round ratios ours / upstream, for the wall
    clock and for process CPU time (less sensitive to other jobs on a shared machine)."""
    out: Dict[str, object] = {}
    for k, clock in enumerate(("", "cpu_")):
        ours = [x[k] for x in t["ours"]]
        up = [x[k] for x in t["upstream"]]
        ratios = [a / b for a, b in zip(ours, up)]
        out.update(
            {
                f"{clock}ours_ms": 1000 * statistics.median(ours),
                f"{clock}upstream_ms": 1000 * statistics.median(up),
                f"{clock}ratio": statistics.median(ratios),
                f"{clock}ratio_min": min(ratios),
                f"{clock}ratio_max": max(ratios),
                f"{clock}ours_all_ms": [1000 * x for x in ours],
                f"{clock}upstream_all_ms": [1000 * x for x in up],
            }
        )
    return out


def run_size(size: int, args, upstream_cfg_cls, root: str) -> Dict[str, object]:
    eval_size = [size, size]  # upstream's eval mode needs it equal to the input size
    torch.manual_seed(args.seed)
    up_cfg = build_upstream(upstream_cfg_cls, root, eval_size)
    our_cfg = build_ours(eval_size)
    up_model, up_crit, up_post = up_cfg.model, up_cfg.criterion, up_cfg.postprocessor
    our_model, our_crit, our_post = our_cfg.model, our_cfg.criterion, our_cfg.postprocessor
    n_keys = copy_weights(up_model, our_model)
    if not getattr(our_crit, "icr", None) or not our_crit.icr.active:
        raise SystemExit(f"compare_upstream: ICR is not active in {OUR_CONFIG}")

    gen = torch.Generator().manual_seed(args.seed)
    images = torch.rand(args.batch, 3, size, size, generator=gen)
    targets = random_pair_targets(args.batch, args.pairs, gen)
    sizes = torch.tensor([[size, size]] * args.batch)

    ours = Side(
        "ours",
        our_model,
        our_crit,
        our_post,
        make_optimizer(our_cfg, our_model, args.optimizer, args.lr),
        args.amp,
    )
    up = Side(
        "upstream",
        up_model,
        up_crit,
        up_post,
        make_optimizer(up_cfg, up_model, args.optimizer, args.lr),
        args.amp,
    )
    parity = eval_parity(ours, up, images, sizes)  # before training changes the weights

    steps = {}
    if args.mode in ("train", "both"):
        steps["train"] = (
            lambda s: ours.train_step(images, targets, s),
            lambda s: up.train_step(images, targets, s),
        )
    if args.mode in ("eval", "both"):
        steps["eval"] = (
            lambda s: ours.eval_step(images, sizes, s),
            lambda s: up.eval_step(images, sizes, s),
        )
    times = interleave(steps, args.rounds, args.warmup)
    result = {
        "size": size,
        "eval_spatial_size": eval_size,
        "state_dict_keys": n_keys,
        "eval_parity_max_abs_diff": parity,
    }
    result.update({phase: summarize(t) for phase, t in times.items()})
    return result


def markdown(results: List[dict], meta: dict) -> str:
    amp = ", train forward under bf16 autocast (--amp)" if meta["amp"] else ""
    lines = [
        f"RT-DETRv2-R18, batch {meta['batch']}, {NUM_CLASSES} classes, "
        f"{meta['threads']} threads, {meta['rounds']} rounds (+{meta['warmup']} warm-up), "
        f"{meta['device']}{amp}; ours: ICR on; upstream: its baseline criterion. "
        f"Ratio: median over rounds of ours / upstream (min-max).",
        "",
        "| size | phase | ours ms | upstream ms | ours / upstream | CPU-time ratio |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        for phase in ("train", "eval"):
            if phase in r:
                s = r[phase]
                lines.append(
                    f"| {r['size']} | {phase} | {s['ours_ms']:.1f} | "
                    f"{s['upstream_ms']:.1f} | {s['ratio']:.3f} "
                    f"({s['ratio_min']:.3f}-{s['ratio_max']:.3f}) | "
                    f"{s['cpu_ratio']:.3f} |"
                )
    return "\n".join(lines)


def compare(args) -> Tuple[List[dict], dict, str]:
    """Every size of ``args`` (tools/compare_upstream.py's options): (results, meta, markdown)."""
    root = resolve_upstream(args.upstream)
    upstream_cfg_cls = import_upstream(root)
    if args.threads:
        torch.set_num_threads(args.threads)
    meta = {
        "upstream": root,
        "batch": args.batch,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "threads": torch.get_num_threads(),
        "device": "cpu",
        "pairs": args.pairs,
        "amp": args.amp,
        "optimizer": args.optimizer,
        "seed": args.seed,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "our_config": OUR_CONFIG,
    }
    results = []
    for size in args.sizes:
        r = run_size(size, args, upstream_cfg_cls, root)
        results.append(r)
        print(f"size {size}: eval parity max |diff| {r['eval_parity_max_abs_diff']}", flush=True)
    table = markdown(results, meta)
    return results, meta, table
