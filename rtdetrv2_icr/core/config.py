"""`YAMLConfig`: a merged YAML config that builds the components it names.

    cfg = YAMLConfig('configs/rtdetrv2/rtdetrv2_r18vd_svmlp.yml', num_classes=80,
                     PResNet={'pretrained': False})
    model, criterion, postprocessor = cfg.model, cfg.criterion, cfg.postprocessor

Keyword overrides (and ``-u key.sub=value`` on the command line, via ``parse_cli``) merge into
the loaded files exactly like a last included file would.

Training pieces (built lazily, once, from the same config; see `rtdetrv2_icr/engine`):
``.optimizer`` (regex param groups), ``.lr_scheduler``, ``.lr_warmup_scheduler``, ``.ema``,
``.scaler``, ``.train_dataloader`` / ``.val_dataloader`` / ``.test_dataloader`` (DistributedSampler,
``total_batch_size`` split across ranks) and ``.evaluator`` / ``.build_evaluator(dataset)``.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Optional

from .registry import ConfigError, create
from .yaml_utils import SOURCES_KEY, load_config, merge_dict

__all__ = ["YAMLConfig"]


class YAMLConfig:
    def __init__(self, cfg_path: Optional[str] = None, cfg: Optional[dict] = None, **overrides: Any):
        if (cfg_path is None) == (cfg is None):
            raise ConfigError("YAMLConfig needs exactly one of a config path or a config dict")
        merged = load_config(cfg_path) if cfg_path is not None else merge_dict({SOURCES_KEY: {}}, cfg)
        merged.setdefault(SOURCES_KEY, {})
        if overrides:
            merge_dict(merged, overrides, merged[SOURCES_KEY], "override")
        self.cfg_path = cfg_path
        self.yaml_cfg: Dict[str, Any] = merged
        self._built: Dict[str, Any] = {}

    # ---- generic access -------------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        """Value of a dotted key (``'RTDETRTransformerv2.num_queries'``) or ``default``."""
        node: Any = self.yaml_cfg
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def __getitem__(self, key: str) -> Any:
        return self.yaml_cfg[key]

    def __contains__(self, key: str) -> bool:
        return key in self.yaml_cfg

    def source_of(self, key: str) -> Optional[str]:
        """The file (or 'override') that set a dotted key last."""
        return self.yaml_cfg[SOURCES_KEY].get(key)

    def create(self, name: Any, **kwargs: Any):
        """Build the component a section or top-level key names (see `registry.create`)."""
        return create(name, self.yaml_cfg, **kwargs)

    def _build_named(self, key: str):
        """Build the component named by a top-level key such as ``model: RTDETR`` (cached)."""
        if key not in self._built:
            if key not in self.yaml_cfg:
                raise ConfigError(f"config {self.cfg_path or '<dict>'} has no top-level {key!r}")
            spec = self.yaml_cfg[key]
            self._built[key] = create(spec, self.yaml_cfg, _path=key if isinstance(spec, dict) else None)
        return self._built[key]

    @property
    def model(self):
        return self._build_named("model")

    @property
    def criterion(self):
        return self._build_named("criterion")

    @property
    def postprocessor(self):
        return self._build_named("postprocessor")

    # ---- training pieces (engine) -------------------------------------------------------------
    @property
    def device(self):
        """The device this process uses: the `device` key (``--device``) or CUDA when available."""
        from ..engine.dist import pick_device
        return pick_device(self.get("device") or None)

    def _create_section(self, key: str, **kwargs):
        """Build a `type:` section, ignoring keys set to null: a config that switches e.g.
        `lr_scheduler.type` from MultiStepLR to FlatCosineLR nulls the inherited `milestones`."""
        spec = self.yaml_cfg[key]
        if isinstance(spec, dict):
            spec = {k: v for k, v in spec.items() if v is not None}
            return create(spec, self.yaml_cfg, _path=key, **kwargs)
        return create(spec, self.yaml_cfg, **kwargs)

    def _cached(self, key: str, build):
        if key not in self._built:
            self._built[key] = build()
        return self._built[key]

    @property
    def optimizer(self):
        def build():
            from ..engine.optim import build_param_groups
            spec = self.yaml_cfg.get("optimizer")
            if not isinstance(spec, dict) or "type" not in spec:
                raise ConfigError(f"config {self.cfg_path or '<dict>'} needs an 'optimizer' section with a type")
            groups = build_param_groups(self.model, spec.get("params"))
            return self._create_section("optimizer", params=groups)
        return self._cached("optimizer", build)

    @property
    def lr_scheduler(self):
        if "lr_scheduler" not in self.yaml_cfg or self.yaml_cfg["lr_scheduler"] is None:
            return None
        return self._cached("lr_scheduler", lambda: self._create_section("lr_scheduler", optimizer=self.optimizer))

    @property
    def lr_warmup_scheduler(self):
        if not self.yaml_cfg.get("lr_warmup_scheduler"):
            return None
        def build():
            sched = self.lr_scheduler
            if sched is None:
                raise ConfigError("lr_warmup_scheduler needs an lr_scheduler section")
            return self._create_section("lr_warmup_scheduler", lr_scheduler=sched)
        return self._cached("lr_warmup_scheduler", build)

    @property
    def ema(self):
        """`ModelEMA` of `.model` when `use_ema` (build it after the model reached its device)."""
        if not self.yaml_cfg.get("use_ema", False):
            return None
        return self._cached("ema", lambda: self._create_section("ema", model=self.model)
                            if isinstance(self.yaml_cfg.get("ema"), dict)
                            else create("ModelEMA", self.yaml_cfg, model=self.model))

    @property
    def amp_dtype(self):
        """None (AMP off) or the autocast dtype for this device: fp16 or bf16 on CUDA, bf16 on CPU."""
        import torch
        if not self.yaml_cfg.get("use_amp", False):
            return None
        name = str(self.yaml_cfg.get("amp_dtype", "float16")).replace("torch.", "")
        table = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
                 "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
        if name not in table:
            raise ConfigError(f"amp_dtype must be float16 or bfloat16, got {name!r}")
        dtype = table[name]
        if self.device.type == "cpu" and dtype == torch.float16:
            dtype = torch.bfloat16  # CPU autocast runs in bf16; fp16 there is not supported
        return dtype

    @property
    def scaler(self):
        """A GradScaler for fp16 AMP on CUDA; None otherwise (bf16 and fp32 need none)."""
        import torch
        if self.amp_dtype != torch.float16 or self.device.type != "cuda":
            return None
        def build():
            spec = self.yaml_cfg.get("scaler")
            if isinstance(spec, dict):
                return create("scaler", self.yaml_cfg, device="cuda")
            return torch.amp.GradScaler("cuda")
        return self._cached("scaler", build)

    # dataloaders --------------------------------------------------------------------------------
    def dataloader_spec(self, name: str) -> Dict[str, Any]:
        """The merged section of a loader; `test_dataloader` is `val_dataloader` with the test
        section's keys (usually just the dataset paths) merged over it."""
        if name == "test_dataloader":
            if not isinstance(self.yaml_cfg.get("test_dataloader"), dict):
                raise ConfigError(f"config {self.cfg_path or '<dict>'} has no test_dataloader section "
                                  f"(add one with the test split's img_folder/ann_file)")
            return merge_dict(copy.deepcopy(self.yaml_cfg.get("val_dataloader") or {}),
                              self.yaml_cfg["test_dataloader"])
        spec = self.yaml_cfg.get(name)
        if not isinstance(spec, dict):
            raise ConfigError(f"config {self.cfg_path or '<dict>'} has no {name} section")
        return copy.deepcopy(spec)

    def build_dataloader(self, name: str, shuffle: Optional[bool] = None):
        """Build a loader section. The dataset is sharded with a DistributedSampler (also in one
        process: num_replicas=1), so shuffling depends only on `seed` and the epoch
        (`loader.sampler.set_epoch`). `total_batch_size` is divided by the world size;
        `batch_size` is per process."""
        import torch.utils.data as tud
        from ..engine import dist
        spec = self.dataloader_spec(name)
        spec.pop("type", None)
        if ("total_batch_size" in spec) == ("batch_size" in spec):
            raise ConfigError(f"{name}: give exactly one of total_batch_size and batch_size")
        world = dist.get_world_size()
        if "total_batch_size" in spec:
            total = int(spec.pop("total_batch_size"))
            if total % world:
                raise ConfigError(f"{name}.total_batch_size={total} is not divisible by the "
                                  f"world size {world}")
            batch_size = total // world
        else:
            batch_size = int(spec.pop("batch_size"))
        do_shuffle = bool(spec.pop("shuffle", False)) if shuffle is None else shuffle
        spec.pop("shuffle", None)
        if "dataset" not in spec:
            raise ConfigError(f"{name} has no dataset")
        ds_spec = spec.pop("dataset")
        dataset = create(ds_spec, self.yaml_cfg, _path=f"{name}.dataset") if isinstance(ds_spec, dict) \
            else create(ds_spec, self.yaml_cfg)
        collate = spec.pop("collate_fn", None)
        if collate is not None:
            collate = create(collate, self.yaml_cfg, _path=f"{name}.collate_fn") if isinstance(collate, dict) \
                else create(collate, self.yaml_cfg)
        else:
            from ..engine.solver import default_collate_fn
            collate = default_collate_fn
        sampler = tud.DistributedSampler(dataset, num_replicas=world, rank=dist.get_rank(),
                                         shuffle=do_shuffle, seed=int(self.yaml_cfg.get("seed") or 0))
        try:
            loader = tud.DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate, **spec)
        except TypeError as e:
            raise ConfigError(f"{name}: {e}") from e
        loader.shuffle = do_shuffle  # type: ignore[attr-defined]
        return loader

    @property
    def train_dataloader(self):
        return self._cached("train_dataloader", lambda: self.build_dataloader("train_dataloader"))

    @property
    def val_dataloader(self):
        return self._cached("val_dataloader", lambda: self.build_dataloader("val_dataloader", shuffle=False))

    @property
    def test_dataloader(self):
        return self._cached("test_dataloader", lambda: self.build_dataloader("test_dataloader", shuffle=False))

    def dataloader(self, split: str):
        """`train`, `val` or `test`."""
        if split not in ("train", "val", "test"):
            raise ConfigError(f"unknown split {split!r} (train, val or test)")
        return getattr(self, f"{split}_dataloader")

    # evaluation ---------------------------------------------------------------------------------
    def build_evaluator(self, dataset):
        """A CocoEvaluator (the `evaluator` section, default `CocoEvaluator`) on `dataset`'s
        ground truth, mapping contiguous labels back to its category ids."""
        import torch.utils.data as tud
        base = dataset
        while isinstance(base, tud.Subset):
            base = base.dataset
        if not hasattr(base, "coco"):
            raise ConfigError(f"{type(base).__name__} exposes no COCO ground truth (.coco) to evaluate against")
        spec = self.yaml_cfg.get("evaluator") or "CocoEvaluator"
        return create(spec, self.yaml_cfg, _path="evaluator" if isinstance(spec, dict) else None,
                      coco_gt=base.coco, label_to_category=getattr(base, "label_to_category", None))

    @property
    def evaluator(self):
        return self._cached("evaluator", lambda: self.build_evaluator(self.val_dataloader.dataset))

    def to_dict(self) -> Dict[str, Any]:
        """The merged config without bookkeeping keys (for logging and checkpoints)."""
        return {k: copy.deepcopy(v) for k, v in self.yaml_cfg.items() if k != SOURCES_KEY}

    def __repr__(self) -> str:
        return f"YAMLConfig({self.cfg_path!r})"
