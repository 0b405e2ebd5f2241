"""RT-DETRv2 decoder parts: deformable attention, denoising groups, decoder outputs, post-processor.

Tiny sizes (hidden 32, 3 levels of at most 16x16 cells, 10 queries) keep the file fast.
"""

import pytest
import torch
import torch.nn as nn

from rtdetrv2_icr.nn.anchors import generate_anchors
from rtdetrv2_icr.nn.attention import MSDeformableAttention, deformable_sample
from rtdetrv2_icr.nn.common import MLP
from rtdetrv2_icr.nn.decoder import RTDETRTransformerv2
from rtdetrv2_icr.nn.denoising import build_denoising_group, denoising_attn_mask
from rtdetrv2_icr.nn.postprocessor import MSCOCO_CATEGORY_IDS, RTDETRPostProcessor

torch.set_num_threads(1)

HIDDEN, CLASSES, QUERIES, SHAPES = 32, 5, 10, [(16, 16), (8, 8), (4, 4)]


def _feats(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, HIDDEN, h, w, generator=g) for h, w in SHAPES]


def _targets(counts, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in counts:
        centre = torch.rand(n, 2, generator=g) * 0.6 + 0.2
        size = torch.rand(n, 2, generator=g) * 0.2 + 0.05
        out.append(
            {
                "labels": torch.randint(0, CLASSES, (n,), generator=g),
                "boxes": torch.cat([centre, size], -1),
                "parent_idx": torch.full((n,), -1),
            }
        )  # extra keys are ignored
    return out


def _decoder(**kw):
    args = dict(
        num_classes=CLASSES,
        hidden_dim=HIDDEN,
        num_queries=QUERIES,
        feat_channels=[HIDDEN] * 3,
        feat_strides=[8, 16, 32],
        num_levels=3,
        num_points=[2, 3, 1],
        nhead=4,
        num_layers=3,
        dim_feedforward=64,
        num_denoising=12,
        eval_spatial_size=[128, 128],
    )
    args.update(kw)
    torch.manual_seed(0)
    return RTDETRTransformerv2(**args)


# ------------------------------------------------------------------ deformable attention
@pytest.mark.parametrize("method", ["default", "discrete"])
def test_deformable_attention_shapes_and_gradients(method):
    torch.manual_seed(0)
    attn = MSDeformableAttention(HIDDEN, 4, 3, [2, 3, 1], method=method)
    # offsets and weights start independent of the query (zero weight); perturb them
    nn.init.normal_(attn.sampling_offsets.weight, std=0.1)
    nn.init.normal_(attn.attention_weights.weight, std=0.1)
    value = torch.randn(2, sum(h * w for h, w in SHAPES), HIDDEN, requires_grad=True)
    query = torch.randn(2, 7, HIDDEN, requires_grad=True)
    ref = torch.rand(2, 7, 1, 4) * 0.5 + 0.25
    out = attn(query, ref, value, SHAPES)
    assert out.shape == (2, 7, HIDDEN)
    assert attn.num_points_scale.tolist() == pytest.approx([1 / 2] * 2 + [1 / 3] * 3 + [1.0])
    out.square().sum().backward()
    assert value.grad.abs().sum() > 0 and query.grad.abs().sum() > 0
    assert attn.attention_weights.weight.grad.abs().sum() > 0
    if method == "default":
        assert attn.sampling_offsets.weight.grad.abs().sum() > 0
    else:  # nearest-cell reads: offsets frozen as upstream
        assert not attn.sampling_offsets.weight.requires_grad
    # the point-level bookkeeping buffer is not saved
    assert set(attn.state_dict()) == {
        "num_points_scale",
        "sampling_offsets.weight",
        "sampling_offsets.bias",
        "attention_weights.weight",
        "attention_weights.bias",
        "value_proj.weight",
        "value_proj.bias",
        "output_proj.weight",
        "output_proj.bias",
    }


@pytest.mark.parametrize("method", ["default", "discrete"])
def test_deformable_sample_reads_one_cell(method):
    # bilinear: a location at a cell centre reads exactly that cell.
    # discrete (as upstream): cell (col, row) is read for x*w in [col - 0.5, col + 0.5)
    b, heads, d = 1, 2, 3
    value = torch.randn(b, sum(h * w for h, w in SHAPES), heads, d)
    level, (h, w), (row, col) = 1, SHAPES[1], (5, 2)
    start = SHAPES[0][0] * SHAPES[0][1]
    offset = 0.5 if method == "default" else 0.3
    loc = torch.full((b, 1, heads, 3, 2), 0.5)  # one point per level
    loc[:, :, :, level] = torch.tensor([(col + offset) / w, (row - offset + 0.1) / h])
    if method == "default":
        loc[:, :, :, level, 1] = (row + 0.5) / h
    weights = torch.zeros(b, 1, heads, 3)
    weights[..., level] = 1.0
    out = deformable_sample(value, SHAPES, loc, weights, [1, 1, 1], method)  # [B, 1, H*D]
    expected = value[:, start + row * w + col].reshape(b, heads * d)
    assert torch.allclose(out[:, 0], expected, atol=1e-6)


def test_deformable_attention_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_points"):
        MSDeformableAttention(HIDDEN, 4, 3, [2, 2])
    with pytest.raises(ValueError, match="method"):
        MSDeformableAttention(HIDDEN, 4, 3, 2, method="bilinear")


# ------------------------------------------------------------------ denoising
def test_denoising_group_layout_mask_and_meta():
    embed = nn.Embedding(CLASSES + 1, HIDDEN, padding_idx=CLASSES)
    targets = _targets([3, 1])
    torch.manual_seed(0)
    dn = build_denoising_group(
        targets,
        CLASSES,
        QUERIES,
        embed,
        num_denoising=10,
        label_noise_ratio=0.5,
        box_noise_scale=1.0,
    )
    m, groups = 3, 10 // 3  # max objects per image, groups
    n_dn = 2 * m * groups
    assert dn.content.shape == (2, n_dn, HIDDEN) and dn.ref_unact.shape == (2, n_dn, 4)
    assert torch.isfinite(dn.ref_unact).all()
    assert dn.meta["dn_num_group"] == groups and dn.meta["dn_num_split"] == [n_dn, QUERIES]
    assert dn.meta["dn_positive_idx"][0].tolist() == [0, 1, 2, 6, 7, 8, 12, 13, 14]
    assert dn.meta["dn_positive_idx"][1].tolist() == [0, 6, 12]

    mask = dn.attn_mask
    assert mask.shape == (n_dn + QUERIES, n_dn + QUERIES) and mask.dtype == torch.bool
    assert mask[n_dn:, :n_dn].all() and not mask[n_dn:, n_dn:].any()  # matching: no dn
    assert not mask[:n_dn, n_dn:].any()  # dn sees matching
    for g in range(groups):
        rows = slice(2 * m * g, 2 * m * (g + 1))
        seen = ~mask[rows, :n_dn]
        assert seen[:, rows].all() and seen.sum() == (2 * m) ** 2  # only its own group

    # padded slots (image 1 has one object) carry the padding class, whose embedding is zero
    pad_slot = 1
    assert torch.equal(dn.content[1, pad_slot], torch.zeros(HIDDEN))


def test_denoising_noise_bounds():
    # positives move each corner by < half the box size, negatives by [0.5, 1) x size
    embed = nn.Embedding(CLASSES + 1, HIDDEN, padding_idx=CLASSES)
    box = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    targets = [{"labels": torch.tensor([1]), "boxes": box}]
    torch.manual_seed(3)
    dn = build_denoising_group(
        targets,
        CLASSES,
        QUERIES,
        embed,
        num_denoising=200,
        label_noise_ratio=0.0,
        box_noise_scale=1.0,
    )
    noisy = dn.ref_unact.sigmoid()[0]  # [N_dn, 4] cxcywh
    corners = torch.cat([noisy[:, :2] - noisy[:, 2:] / 2, noisy[:, :2] + noisy[:, 2:] / 2], -1)
    shift = (corners - torch.tensor([0.4, 0.4, 0.6, 0.6])).abs()
    pos, neg = shift[0::2], shift[1::2]
    assert pos.max() <= 0.1 + 1e-4
    # a negative whose corners crossed collapses to ~zero size (inverse_sigmoid floors it)
    kept = (noisy[1::2, 2:] > 1e-3).all(-1)
    assert kept.sum() > 10
    assert neg[kept].min() >= 0.1 - 1e-4 and neg[kept].max() <= 0.2 + 1e-4


def test_denoising_zero_target_batch_keeps_one_padded_group():
    embed = nn.Embedding(CLASSES + 1, HIDDEN, padding_idx=CLASSES)
    dn = build_denoising_group(_targets([0, 0]), CLASSES, QUERIES, embed, num_denoising=10)
    assert dn.content.shape == (2, 2, HIDDEN) and dn.meta["dn_num_group"] == 1
    assert dn.meta["dn_num_split"] == [2, QUERIES]
    assert [p.numel() for p in dn.meta["dn_positive_idx"]] == [0, 0]
    assert torch.isfinite(dn.ref_unact).all() and dn.attn_mask.shape == (2 + QUERIES,) * 2
    assert torch.equal(dn.content, torch.zeros_like(dn.content))  # padding class only


def test_attn_mask_single_group():
    mask = denoising_attn_mask(4, 4, 3)
    assert not mask[:4].any() and mask[4:, :4].all() and not mask[4:, 4:].any()


# ------------------------------------------------------------------ decoder outputs
def _check_layer(d, n, k=CLASSES):
    assert d["pred_logits"].shape == (2, n, k) and d["pred_boxes"].shape == (2, n, 4)
    assert d["ref_points"].shape == (2, n, 4) and not d["ref_points"].requires_grad
    assert ((d["pred_boxes"] >= 0) & (d["pred_boxes"] <= 1)).all()


def test_decoder_train_outputs_structure_and_references():
    model = _decoder().train()
    out = model(_feats(), _targets([3, 2]))
    assert set(out) == {
        "pred_logits",
        "pred_boxes",
        "ref_points",
        "aux_outputs",
        "enc_aux_outputs",
        "enc_meta",
        "dn_aux_outputs",
        "dn_meta",
    }
    _check_layer(out, QUERIES)
    assert len(out["aux_outputs"]) == 2 and len(out["enc_aux_outputs"]) == 1
    assert out["enc_meta"] == {"class_agnostic": False}
    for d in out["aux_outputs"] + out["enc_aux_outputs"]:
        _check_layer(d, QUERIES)
    n_dn = 2 * 3 * (12 // 3)
    assert out["dn_meta"]["dn_num_split"] == [n_dn, QUERIES] and len(out["dn_aux_outputs"]) == 3
    for d in out["dn_aux_outputs"]:
        _check_layer(d, n_dn)

    # layer 0 starts from the selected encoder proposals; layer i+1 from layer i's boxes
    layers = out["aux_outputs"] + [out]
    assert torch.allclose(layers[0]["ref_points"], out["enc_aux_outputs"][0]["pred_boxes"])
    for prev, nxt in zip(layers[:-1], layers[1:]):
        assert torch.allclose(nxt["ref_points"], prev["pred_boxes"], atol=1e-6)
    dn = out["dn_aux_outputs"]
    for prev, nxt in zip(dn[:-1], dn[1:]):
        assert torch.allclose(nxt["ref_points"], prev["pred_boxes"], atol=1e-6)

    # every trainable parameter receives a gradient from the outputs
    loss = sum(
        d["pred_logits"].sum() + d["pred_boxes"].sum()
        for d in [out] + layers[:-1] + out["enc_aux_outputs"] + dn
    )
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


def test_denoising_queries_do_not_change_matching_outputs():
    # with BN frozen, the matching-query outputs of a training pass with denoising equal the
    # eval outputs: the attention mask hides the ground-truth queries completely
    model = _decoder(eval_idx=-1)
    feats = _feats()
    with torch.no_grad():
        ref = model.eval()(feats)
        model.train()
        model.input_proj.eval()
        out = model(feats, _targets([4, 1]))
    assert torch.allclose(out["pred_logits"], ref["pred_logits"], atol=1e-5)
    assert torch.allclose(out["pred_boxes"], ref["pred_boxes"], atol=1e-6)


@pytest.mark.parametrize("counts", [[0, 0], [0, 3]])
def test_decoder_zero_and_mixed_targets(counts):
    model = _decoder().train()
    out = model(_feats(), _targets(counts))
    assert [p.numel() for p in out["dn_meta"]["dn_positive_idx"]] == [
        n * out["dn_meta"]["dn_num_group"] for n in counts
    ]
    n_dn = out["dn_meta"]["dn_num_split"][0]
    assert all(d["pred_boxes"].shape == (2, n_dn, 4) for d in out["dn_aux_outputs"])
    total = sum(d["pred_logits"].sum() for d in out["dn_aux_outputs"]) + out["pred_boxes"].sum()
    total.backward()
    assert model.denoising_class_embed.weight.grad is not None  # same graph on every rank


def test_decoder_eval_outputs_and_eval_idx():
    model = _decoder(eval_idx=1).eval()
    with torch.no_grad():
        out = model(_feats())
    assert set(out) == {"pred_logits", "pred_boxes", "ref_points"}
    _check_layer(out, QUERIES)
    # eval at another input size regenerates anchors instead of using the cached ones
    feats = [torch.randn(1, HIDDEN, h // 2, w // 2) for h, w in SHAPES]
    with torch.no_grad():
        assert model(feats)["pred_boxes"].shape == (1, QUERIES, 4)


def test_decoder_cached_anchors_match_generated_ones():
    model = _decoder()
    anchors, valid = generate_anchors(SHAPES, model.eps)
    assert torch.equal(model.anchors, anchors) and torch.equal(model.valid_mask, valid)
    assert model.anchors.shape == (1, sum(h * w for h, w in SHAPES), 4)
    assert torch.isinf(model.anchors[~model.valid_mask.expand_as(model.anchors)]).all()


def test_decoder_agnostic_query_selection_and_no_aux():
    model = _decoder(query_select_method="agnostic").train()
    out = model(_feats(), _targets([1, 2]))
    assert out["enc_aux_outputs"][0]["pred_logits"].shape == (2, QUERIES, 1)
    assert out["enc_meta"] == {"class_agnostic": True}
    model = _decoder(aux_loss=False, num_denoising=0).train()
    assert set(model(_feats())) == {"pred_logits", "pred_boxes", "ref_points"}


def test_decoder_state_dict_layout():
    keys = set(_decoder().state_dict())
    expected_some = {
        "anchors",
        "valid_mask",
        "denoising_class_embed.weight",
        "query_pos_head.layers.1.weight",
        "enc_output.proj.weight",
        "enc_output.norm.bias",
        "enc_score_head.weight",
        "enc_bbox_head.layers.2.bias",
        "input_proj.2.conv.weight",
        "input_proj.2.norm.running_mean",
        "decoder.layers.2.self_attn.in_proj_weight",
        "decoder.layers.2.cross_attn.num_points_scale",
        "decoder.layers.0.cross_attn.sampling_offsets.weight",
        "dec_score_head.2.bias",
        "dec_bbox_head.2.layers.2.weight",
    }
    assert expected_some <= keys
    assert not any(k.startswith("tgt_embed") for k in keys)
    assert "anchors" not in _decoder(eval_spatial_size=None).state_dict()


def test_decoder_box_head_extension_point():
    # a head may return (offset, extras); extras join that layer's outputs and are split for dn
    class DistHead(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.mlp = MLP(dim, dim, 4 * 3, 2)

        def forward(self, x):
            logits = self.mlp(x).unflatten(-1, (4, 3))
            delta = (logits.softmax(-1) * torch.tensor([-1.0, 0.0, 1.0])).sum(-1)
            return delta, {"pred_box_dist": logits}

    class Decoder(RTDETRTransformerv2):
        def build_box_head(self):
            return DistHead(self.hidden_dim)

    torch.manual_seed(0)
    model = Decoder(
        num_classes=CLASSES,
        hidden_dim=HIDDEN,
        num_queries=QUERIES,
        feat_channels=[HIDDEN] * 3,
        num_levels=3,
        nhead=4,
        num_layers=2,
        dim_feedforward=64,
        num_denoising=6,
    ).train()
    out = model(_feats(), _targets([2, 1]))
    n_dn = out["dn_meta"]["dn_num_split"][0]
    assert out["pred_box_dist"].shape == (2, QUERIES, 4, 3)
    assert out["aux_outputs"][0]["pred_box_dist"].shape == (2, QUERIES, 4, 3)
    assert out["enc_aux_outputs"][0]["pred_box_dist"].shape == (2, QUERIES, 4, 3)
    assert out["dn_aux_outputs"][1]["pred_box_dist"].shape == (2, n_dn, 4, 3)


def test_decoder_clear_errors():
    model = _decoder().train()
    with pytest.raises(ValueError, match="needs `targets`"):
        model(_feats())
    with pytest.raises(ValueError, match=r"targets\[1\] has no 'boxes'"):
        model(_feats(), [_targets([1])[0], {"labels": torch.tensor([0])}])
    with pytest.raises(ValueError, match="must lie in"):
        model(_feats(), [{"labels": torch.tensor([CLASSES]), "boxes": torch.rand(1, 4)}] * 2)
    with pytest.raises(ValueError, match="eval_idx"):
        _decoder(eval_idx=5)


# ------------------------------------------------------------------ post-processor
def _raw_outputs():
    logits = torch.full((2, 4, 3), -10.0)
    logits[0, 2, 1] = 3.0  # image 0: best is query 2 / class 1, then query 0 / class 2
    logits[0, 0, 2] = 1.0
    logits[1, 3, 0] = 2.0
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.4]]).repeat(2, 4, 1)
    boxes[0, 2] = torch.tensor([0.25, 0.5, 0.5, 1.0])
    return {"pred_logits": logits, "pred_boxes": boxes}


def test_postprocessor_topk_and_scaling():
    post = RTDETRPostProcessor(num_classes=3, num_top_queries=2)
    res = post(_raw_outputs(), torch.tensor([[200, 100], [640, 480]]))  # (width, height)
    assert res[0]["labels"].tolist() == [1, 2]
    assert res[0]["scores"][0].item() == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item())
    assert res[0]["boxes"][0].tolist() == pytest.approx([0.0, 0.0, 100.0, 100.0])
    assert res[0]["boxes"][1].tolist() == pytest.approx([80.0, 30.0, 120.0, 70.0])
    assert res[1]["labels"][0].item() == 0 and res[1]["boxes"].shape == (2, 4)


def test_postprocessor_remap_and_deploy():
    outputs, sizes = _raw_outputs(), torch.tensor([[10, 10], [10, 10]])
    post = RTDETRPostProcessor(num_classes=3, num_top_queries=2)
    res = post(outputs, sizes, label_to_category={0: 7, 1: 3, 2: 9})
    assert res[0]["labels"].tolist() == [3, 9]
    post.label_to_category = [11, 12, 13]
    assert post(outputs, sizes)[0]["labels"].tolist() == [12, 13]
    coco = RTDETRPostProcessor(num_classes=80, num_top_queries=1, remap_mscoco_category=True)
    logits = torch.full((1, 2, 80), -5.0)
    logits[0, 1, 79] = 5.0
    res = coco({"pred_logits": logits, "pred_boxes": torch.rand(1, 2, 4)}, torch.tensor([[1, 1]]))
    assert res[0]["labels"].tolist() == [90] and len(MSCOCO_CATEGORY_IDS) == 80
    post.deploy()
    labels, boxes, scores = post(outputs, sizes)  # plain tensors, no remap
    assert labels.tolist()[0] == [1, 2] and boxes.shape == (2, 2, 4) and scores.shape == (2, 2)


def test_postprocessor_softmax_branch():
    post = RTDETRPostProcessor(num_classes=2, use_focal_loss=False, num_top_queries=2)
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 5.0]]])
    res = post({"pred_logits": logits, "pred_boxes": torch.rand(1, 3, 4)}, torch.tensor([[1, 1]]))
    assert res[0]["labels"].tolist() == [1, 0]
    assert res[0]["scores"].tolist() == pytest.approx(
        logits[0, :2].softmax(-1).max(-1).values.flip(0).tolist()
    )


def test_proposals_on_selected_rows_equal_gathering_after_all_rows():
    """The encoder heads run on the Q selected cells only; that must equal running them on every
    cell and gathering afterwards (the reference path), in eval and in training."""
    from rtdetrv2_icr.nn.decoder import _pick

    model = _decoder()
    memory, shapes = model._flatten_features(_feats())
    for training in (False, True):
        model.train(training)
        content, ref_unact, enc_out = model._proposals(memory, shapes)
        anchors, valid = model._anchors_for(shapes, memory.device)
        mem = valid.to(memory.dtype) * memory
        feat = model.enc_output(mem)
        logits = model.enc_score_head(feat)
        boxes = model.enc_bbox_head(feat) + anchors
        idx = model._select_topk(logits, QUERIES)
        assert torch.equal(content, _pick(feat, idx).detach())
        assert torch.equal(ref_unact, _pick(boxes, idx).detach())
        if training:
            assert torch.equal(enc_out["pred_logits"], _pick(logits, idx))
            assert torch.equal(enc_out["pred_boxes"], _pick(boxes, idx).sigmoid())


def test_fewer_encoder_cells_than_queries_is_a_clear_error():
    feats = _feats()
    cells = sum(f.shape[-2] * f.shape[-1] for f in feats)
    model = _decoder(num_queries=cells + 1).eval()
    with pytest.raises(ValueError, match=f"gives {cells} encoder cells .* num_queries={cells + 1}"):
        model(feats)
