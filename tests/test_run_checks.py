"""A run's config is checked before anything is built; checkpoints supply the weights offline;
the precision is explicit; --test-only takes --split."""

import json
import os

import pytest
import torch
from test_engine_train import make_data, write_config

from rtdetrv2_icr.core import ConfigError, YAMLConfig
from rtdetrv2_icr.core.metric_names import check_metric_name
from rtdetrv2_icr.evaluate.launch import evaluate_from_config
from rtdetrv2_icr.runtime.config_check import check_config
from rtdetrv2_icr.train import Trainer
from rtdetrv2_icr.train.launch import train_from_config


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("checks")
    data = make_data(root / "d", n_train=2, n_val=2, n_test=2)
    return root, data, write_config(root, data, str(root / "out"), extra="epoches: 1\n")


def test_typos_fail_at_once_with_a_hint(setup):
    _, _, cfg = setup
    with pytest.raises(ConfigError, match=r"unknown top-level key 'best_metic'.*'best_metric'"):
        check_config(YAMLConfig(cfg, best_metic="AP50"))
    with pytest.raises(ConfigError, match=r"'plates' is not a class; did you mean 'plate'"):
        check_config(YAMLConfig(cfg, best_metric="plates/AP50"))
    with pytest.raises(ConfigError, match=r"'AP_50' is not a per-class metric"):
        check_config(YAMLConfig(cfg, best_metric="vehicle/AP_50"))
    with pytest.raises(ConfigError, match=r"'AP5095' is not a COCO metric"):
        check_config(YAMLConfig(cfg, best_metric="AP5095"))
    with pytest.raises(ValueError, match=r"relation parent 'vehicles' is not a class"):
        check_config(YAMLConfig(cfg, relations=[{"child": "plate", "parent": "vehicles"}]))
    with pytest.raises(FileNotFoundError, match=r"val_dataloader.dataset.ann_file: .*nope.json"):
        check_config(YAMLConfig(cfg, val_dataloader={"dataset": {"ann_file": "/x/nope.json"}}))
    # the test split is only checked when the run uses it
    bad_test = YAMLConfig(cfg, test_dataloader={"dataset": {"img_folder": "/x/none/"}})
    check_config(bad_test)
    with pytest.raises(FileNotFoundError, match="test_dataloader.dataset.img_folder"):
        check_config(bad_test, splits=("test",))
    assert check_config(YAMLConfig(cfg)).best_metric == "AP50:95"
    check_metric_name("vehicle/AR", ["plate", "vehicle"])
    # a relation's sub-AP may be the best metric, but only of a relation the config declares
    sub = "sub_ap/plate->vehicle/AP50:95"
    assert check_config(YAMLConfig(cfg, best_metric=sub)).best_metric == sub
    with pytest.raises(ConfigError, match=r"declares no relation 'plate->vehicle'"):
        check_config(YAMLConfig(cfg, best_metric=sub, relations=[]))


def test_missing_checkpoint_is_named_before_anything_else(setup, tmp_path):
    _, _, cfg = setup
    missing = str(tmp_path / "gone.pth")
    for run in (
        lambda: train_from_config(cfg, {"device": "cpu", "resume": missing}),
        lambda: train_from_config(cfg, {"device": "cpu", "tuning": missing}),
        lambda: evaluate_from_config(cfg, missing, {"device": "cpu"}),
    ):
        with pytest.raises(FileNotFoundError, match=r"not found: .*gone\.pth"):
            run()


def test_checkpoint_weights_mean_no_download(setup, tmp_path, monkeypatch):
    root, _, cfg = setup

    def no_network(*a, **k):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    ckpt = str(tmp_path / "w.pth")
    torch.save({"model": YAMLConfig(cfg).model.state_dict()}, ckpt)
    online = {"PResNet": {"pretrained": True}}
    with pytest.raises(RuntimeError, match="a download was attempted"):
        YAMLConfig(cfg, **online).model  # without a checkpoint the config asks for it
    for key in ("resume", "tuning"):
        tr = Trainer(YAMLConfig(cfg, device="cpu", **online, **{key: ckpt}))
        assert tr.cfg.get("PResNet.pretrained") is False
        tr.setup_model()  # builds the model: no download
    out = str(tmp_path / "ev")
    overrides = {"device": "cpu", **online}
    evaluate_from_config(cfg, ckpt, overrides, "test", out, prefer_ema=False)
    assert json.load(open(os.path.join(out, "metrics.json")))["split"] == "test"


def test_test_only_takes_split_and_no_amp(setup, tmp_path):
    root, _, cfg = setup
    ckpt = str(tmp_path / "w.pth")
    torch.save({"model": YAMLConfig(cfg).model.state_dict()}, ckpt)
    out = str(tmp_path / "t")
    overrides = {"resume": ckpt, "use_amp": False, "device": "cpu", "output_dir": out}
    train_from_config(cfg, overrides, test_only=True, split="test")
    rep = json.load(open(os.path.join(out, "eval_test", "metrics.json")))
    assert rep["split"] == "test" and rep["num_images"] == 2


def test_init_jitter_perturbs_every_weight_reproducibly():
    from rtdetrv2_icr.runtime.reproducibility import jitter_weights
    from rtdetrv2_icr.runtime.settings import RuntimeSettings

    def net():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(100, 50), torch.nn.BatchNorm1d(50))

    ref, a, b, c = net(), net(), net(), net()
    assert jitter_weights(a, 1e-6, seed=3) == 100 * 50 + 50 + 50 + 50
    jitter_weights(b, 1e-6, seed=3)
    jitter_weights(c, 1e-6, seed=4)
    assert jitter_weights(ref, 0.0, seed=3) == 0
    with torch.no_grad():
        da = torch.cat([(p - q).flatten() for p, q in zip(a.parameters(), ref.parameters())])
    assert 0.8e-6 < float(da.std()) < 1.2e-6 and float((da != 0).float().mean()) > 0.95
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))  # same seed
    assert not torch.equal(a[0].weight, c[0].weight)
    assert torch.equal(a[1].running_mean, ref[1].running_mean)  # buffers are left alone
    with pytest.raises(ValueError, match="init_jitter must be >= 0"):
        RuntimeSettings(init_jitter=-1e-6)
