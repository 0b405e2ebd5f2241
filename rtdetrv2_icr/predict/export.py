"""Export a model and its post-processor to ONNX, and check the export against PyTorch
(tools/export_onnx.py).

    export_onnx(cfg, "model.onnx", checkpoint="best.pth", check=True)

The graph is ``model.deploy()`` (RepVGG blocks fused) followed by the post-processor in deploy
mode: inputs ``images`` float32 [N, 3, H, W] (H x W the config's eval size, N dynamic) and
``orig_target_sizes`` int64 [N, 2] as (width, height); outputs ``labels`` int64 [N, k],
``boxes`` float32 [N, k, 4] (xyxy, pixels of the original image) and ``scores`` [N, k].

The exporter is torch.onnx's dynamo-based one (torch.export), at opset 18, its lowest native
opset; it also exports UAV-DETR's torch.fft blocks. ``legacy`` uses the TorchScript exporter
(opset 17 by default), which exports RT-DETRv2 but not UAV-DETR (no ONNX symbolic for fft_fft2).
The graph's metadata records the post-processor's ``relations`` mode (deploy.RELATIONS_KEY),
which an ONNX evaluation reads (predict/onnx_eval.py). ``check`` runs onnxruntime on a real
image (the first of the config's val dataset, or ``image``) and its horizontal flip (a batch of
2) and compares boxes (pixels) and scores with PyTorch.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from typing import Any, Callable, Dict, Optional

import PIL.Image
import PIL.ImageOps
import torch

from rtdetrv2_icr.data.images import read_image
from rtdetrv2_icr.predict.deploy import (
    OnnxRunner,
    build_deploy_model,
    compare_detections,
    graph_metadata,
)
from rtdetrv2_icr.predict.preprocess import eval_transforms, network_input_size, preprocess

__all__ = ["resolve_opset", "check_image", "export", "export_onnx", "set_metadata"]


def resolve_opset(opset: Optional[int], legacy: bool) -> int:
    """The opset to export at (default 18; 17 with the legacy exporter); refuses what the
    chosen exporter cannot write."""
    if opset is None:
        opset = 17 if legacy else 18
    if opset < 17:
        raise ValueError("--opset must be >= 17")
    if opset < 18 and not legacy:
        raise ValueError(
            "the dynamo exporter starts at opset 18 (it cannot convert these graphs down); "
            "use --legacy for opset 17"
        )
    return opset


def check_image(cfg, path: Optional[str] = None):
    """A real image: ``path`` or the first image of the val dataset's json."""
    if path:
        return read_image(path), path
    ds = cfg.dataloader_spec("val_dataloader").get("dataset") or {}
    ann, folder = ds.get("ann_file"), ds.get("img_folder")
    if not (ann and folder and os.path.isfile(ann)):
        raise FileNotFoundError(
            f"--check needs an image: the val dataset of {cfg.cfg_path} "
            f"({ann}) is not there; give --image PATH"
        )
    with open(ann) as f:
        images = json.load(f)["images"]
    if not images:
        raise FileNotFoundError(f"--check: {ann} lists no images; give --image PATH")
    path = os.path.join(folder, images[0]["file_name"])
    return read_image(path), path


def set_metadata(model, props: Dict[str, str]) -> None:
    """Set ``props`` in the metadata of the ONNX ``model`` (a ModelProto), replacing any entry
    of the same key."""
    for key, value in props.items():
        entry = next((p for p in model.metadata_props if p.key == key), None)
        if entry is None:
            entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)


def export(module, images, sizes, path, opset, legacy):
    """``module`` (a `DeployModel`) to the ONNX file ``path``, with its `graph_metadata`."""
    names = dict(
        input_names=["images", "orig_target_sizes"],
        output_names=["labels", "boxes", "scores"],
        opset_version=opset,
    )
    quiet = logging.getLogger("onnxscript")  # "Skipping constant folding for op Split"
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used")
            if legacy:
                axes = {
                    k: {0: "N"}
                    for k in ("images", "orig_target_sizes", "labels", "boxes", "scores")
                }
                torch.onnx.export(
                    module,
                    (images, sizes),
                    path,
                    dynamo=False,
                    dynamic_axes=axes,
                    do_constant_folding=True,
                    **names,
                )
            else:
                batch = torch.export.Dim("N", min=1, max=1024)
                torch.onnx.export(
                    module,
                    (images, sizes),
                    path,
                    dynamo=True,
                    external_data=False,
                    dynamic_shapes={"images": {0: batch}, "orig_target_sizes": {0: batch}},
                    verbose=False,
                    **names,
                )
    finally:
        quiet.setLevel(level)
    props = graph_metadata(module)
    if props:
        import onnx

        model = onnx.load(path)
        set_metadata(model, props)
        onnx.save(model, path)


def export_onnx(
    cfg,
    output: str,
    checkpoint: Optional[str] = None,
    prefer_ema: bool = True,
    opset: Optional[int] = None,
    legacy: bool = False,
    simplify: bool = False,
    check: bool = False,
    image: Optional[str] = None,
    tol: float = 1e-3,
    log: Optional[Callable[[str], Any]] = None,
) -> Dict[str, Any]:
    """Export ``cfg``'s deploy model (weights of ``checkpoint``, EMA when present and
    ``prefer_ema``; random without one) to ``output``; ``simplify`` with onnxsim; ``check``
    against PyTorch with tolerance ``tol``. Returns {path, check (the comparison or None),
    passed (None without check)}; progress lines go to ``log``."""
    opset = resolve_opset(opset, legacy)
    log = log or (lambda line: print(line, flush=True))
    if simplify:
        try:
            import onnxsim  # noqa: F401
        except ImportError:
            raise ImportError(
                "--simplify needs onnxsim, which is not installed: "
                "pip install onnxsim (or export without --simplify)"
            ) from None
    try:
        import onnx
    except ImportError:
        raise ImportError("export needs onnx: pip install onnx onnxruntime onnxscript") from None
    if not checkpoint:
        log(f"warning: no checkpoint (-r): exporting {cfg.cfg_path} with RANDOM weights")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        module = build_deploy_model(cfg, checkpoint, prefer_ema=prefer_ema)
    transforms = eval_transforms(cfg)
    h, w = network_input_size(cfg, transforms)
    images = torch.rand(2, 3, h, w)  # batch 2: N stays symbolic
    sizes = torch.tensor([[w, h], [2 * w, h]], dtype=torch.int64)
    with torch.no_grad():
        module(images, sizes)
    out_dir = os.path.dirname(os.path.abspath(output))
    os.makedirs(out_dir, exist_ok=True)

    t0 = time.time()
    exporter = "TorchScript (legacy)" if legacy else "dynamo"
    log(f"exporting {cfg.cfg_path} with the {exporter} exporter at opset {opset} ...")
    try:
        export(module, images, sizes, output, opset, legacy)
    except Exception as e:
        hint = (
            ""
            if not legacy
            else "\nthe dynamo exporter (without --legacy) exports torch.fft and more operators"
        )
        raise RuntimeError(
            f"ONNX export of {cfg.cfg_path} with the {exporter} exporter failed: "
            f"{type(e).__name__}: {e}{hint}"
        ) from e
    model = onnx.load(output)
    onnx.checker.check_model(model)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    mb = os.path.getsize(output) / 2**20
    log(
        f"exported {output} ({mb:.1f} MB, opset {opset}, {exporter} exporter, "
        f"{time.time() - t0:.1f} s): images [N, 3, {h}, {w}], orig_target_sizes [N, 2] "
        f"-> labels [N, k], boxes [N, k, 4], scores [N, k]"
    )

    if simplify:
        import onnxsim

        simplified, ok = onnxsim.simplify(model)
        if not ok:
            raise RuntimeError("onnxsim could not validate the simplified model; kept the original")
        set_metadata(simplified, {p.key: p.value for p in model.metadata_props})
        onnx.save(simplified, output)
        log(
            f"simplified with onnxsim: {len(model.graph.node)} -> "
            f"{len(simplified.graph.node)} nodes"
        )

    if check:
        image, path = check_image(cfg, image)
        batch = [image, PIL.ImageOps.mirror(image)]
        tensors, orig = preprocess(batch, transforms)
        x = torch.stack(tensors)
        with torch.no_grad():
            ref = tuple(t.numpy() for t in module(x, orig))
        got = OnnxRunner(output)(x, orig)
        d = compare_detections(ref, got)
        log(
            f"check on {path} and its mirror image ({image.size[0]}x{image.size[1]}, "
            f"{d['detections']} detections): max abs diff boxes {d['max_abs_boxes']:.3g} px, "
            f"scores {d['max_abs_scores']:.3g}; {d['reordered']} equal-score detections came "
            f"out in another order, {d['unpaired']} unpaired, "
            f"{d['label_mismatch']} label mismatches"
        )
        if (
            max(d["max_abs_boxes"], d["max_abs_scores"]) > tol
            or d["unpaired"]
            or d["label_mismatch"]
        ):
            log(f"check FAILED (tolerance {tol})")
            return {"path": output, "check": d, "passed": False}
        log(f"check passed (tolerance {tol})")
        return {"path": output, "check": d, "passed": True}
    return {"path": output, "check": None, "passed": None}
