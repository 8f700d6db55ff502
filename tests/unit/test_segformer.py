"""SegFormer structure: parameter counts, shapes, the folded decoder, and the model API around it."""

import pytest
import torch
import torch.nn.functional as F

import seglab
from seglab.checkpoint import save_model
from seglab.models.segformer import SEGFORMER_VARIANTS
from seglab.registry import get_entry, resolve_options


@pytest.mark.parametrize("variant", list(SEGFORMER_VARIANTS))
def test_parameter_counts_match_the_paper(variant):
    name = f"segformer_{variant}"
    with torch.device("meta"):
        model = get_entry(name).make(resolve_options(name, {"num_classes": 150}))
    params = sum(p.numel() for p in model.parameters())
    # the paper prints millions with one decimal: 3.8 / 13.7 / 27.5 / 47.3 / 64.1 / 84.7
    assert round(params / 1e6, 1) == get_entry(name).published_params_m


def test_b0_and_b2_exact_counts_equal_transformers_figures():
    counts = {}
    for name in ("segformer_b0", "segformer_b2"):
        with torch.device("meta"):
            model = get_entry(name).make(resolve_options(name, {}))
        counts[name] = sum(p.numel() for p in model.parameters())
    assert round(counts["segformer_b0"] / 1e6, 2) == 3.75 and round(counts["segformer_b2"] / 1e6, 2) == 27.46


@pytest.mark.parametrize("size", [(64, 96), (67, 99), (33, 129)])
def test_feature_and_logit_shapes_at_odd_sizes(size):
    model = seglab.create_model("segformer_b0", num_classes=5).eval()
    x = torch.randn(2, 3, *size)
    features = model.backbone(x)
    assert [f.shape[1] for f in features] == [i.channels for i in model.backbone.feature_info] == [32, 64, 160, 256]
    for feature, info in zip(features, model.backbone.feature_info, strict=True):
        assert feature.shape[-2] == _stage_size(size[0], info.stride)
        assert feature.shape[-1] == _stage_size(size[1], info.stride)
    logits = model(x)
    assert logits.shape == (2, 5, _stage_size(size[0], 4), _stage_size(size[1], 4))
    assert model.output_stride == 4


def _stage_size(n, stride):
    """Output side of the overlapping patch embeddings (7/4 pad 3, then 3/2 pad 1) down to `stride`."""
    n = (n + 2 * 3 - 7) // 4 + 1
    while stride > 4:
        n = (n + 2 - 3) // 2 + 1
        stride //= 2
    return n


def test_too_small_input_is_a_clear_error():
    model = seglab.create_model("segformer_b0", num_classes=2).eval()
    with pytest.raises(ValueError, match="at least 29x29 pixels"):
        model(torch.randn(1, 3, 28, 64))


def naive_head(head, features):
    """The All-MLP decoder as written in the paper: project, upsample, concat (deepest first), fuse."""
    size = features[0].shape[-2:]
    projected = []
    for i, x in enumerate(features):
        y = head.linear_c[i](x)
        projected.append(F.interpolate(y, size=size, mode="bilinear", align_corners=head.align_corners))
    x = head.linear_fuse(torch.cat(projected[::-1], dim=1))
    return head.classifier(head.dropout(x))


@pytest.mark.parametrize("stage_norm_act", [False, True])
@pytest.mark.parametrize("align_corners", [False, True])
def test_folded_decoder_equals_concat_then_fuse(stage_norm_act, align_corners):
    model = seglab.create_model("segformer_b0", num_classes=7, head_stage_norm_act=stage_norm_act,
                                align_corners=align_corners)
    head = model.decode_head
    for module in head.modules():  # non-trivial BN statistics and affine parameters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    features = model.backbone(torch.randn(2, 3, 70, 90))
    head.eval()
    assert torch.allclose(head(features), naive_head(head, features), atol=1e-4)
    # training mode uses batch statistics; dropout off so both sides are deterministic
    head.train()
    head.dropout.p = 0.0
    assert torch.allclose(head(features), naive_head(head, features), atol=1e-4)


def test_backward_reaches_every_parameter():
    model = seglab.create_model("segformer_b0", num_classes=3, drop_path_rate=0.0)
    logits, aux = model.forward_train(torch.randn(2, 3, 64, 64))
    assert aux == []
    logits.logsumexp(1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_unknown_override_names_it_and_lists_valid_ones():
    with pytest.raises(TypeError, match=r"unknown override\(s\) 'depths'.*valid: num_classes"):
        seglab.create_model("segformer_b0", depths=(1, 1, 1, 1))
    with pytest.raises(KeyError, match="unknown model segformer_b9; did you mean segformer_b5"):
        seglab.create_model("segformer_b9")
    assert seglab.list_models("segformer_*") == [f"segformer_b{i}" for i in range(6)]


def test_checkpoint_metadata_rebuilds_the_model_and_explicit_arguments_win(tmp_path):
    model = seglab.create_model("segformer_b0", num_classes=4, norm_eps=1e-5, head_dropout=0.0).eval()
    path = tmp_path / "m.safetensors"
    save_model(path, model)
    loaded = seglab.create_model("segformer_b0", checkpoint=path).eval()
    assert loaded.num_classes == 4
    assert loaded.backbone.stages[0].norm.eps == 1e-5  # recorded override applied
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(loaded(x), model(x))
    # an explicit argument beats the recorded one
    explicit = seglab.create_model("segformer_b0", checkpoint=path, norm_eps=1e-6)
    assert explicit.backbone.stages[0].norm.eps == 1e-6
    # a checkpoint for another model is refused, naming both
    with pytest.raises(ValueError, match="made for model segformer_b0, not segformer_b1"):
        seglab.create_model("segformer_b1", checkpoint=path)
    # a different class count cannot load these weights: the error lists the mismatching keys
    with pytest.raises(ValueError, match="decode_head.classifier.weight"):
        seglab.create_model("segformer_b0", checkpoint=path, num_classes=9)


def test_torch_pickle_checkpoints_are_not_executed(tmp_path):
    from seglab.checkpoint import load_state_dict

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    path = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, path)
    with pytest.raises(ValueError, match="weights_only=True"):
        load_state_dict(path)
