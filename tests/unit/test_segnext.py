"""SegNeXt: parameter counts, structure, shapes at odd sizes, the NMF head against a float64 reference written
from the official update rules, the NMF bases modes, autocast, overrides and a tiny overfit."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import seglab
from seglab.heads.ham import NMF2D
from seglab.layers import DropPath
from seglab.losses import cross_entropy
from seglab.registry import get_entry, resolve_options

# Facts from the official configs and README (design/models.md §1.4-1.5, design/anchors.md §1.2), restated here
# rather than read from the code under test.
VARIANTS = {
    "t": dict(dims=(32, 64, 160, 256), depths=(3, 3, 5, 2), drop_path=0.1, head=256, rank=16,
              params=4_263_414, readme_m=4, tenth_m=4.3),
    "s": dict(dims=(64, 128, 320, 512), depths=(2, 2, 4, 2), drop_path=0.1, head=256, rank=16,
              params=13_932_886, readme_m=14, tenth_m=13.9),
    "b": dict(dims=(64, 128, 320, 512), depths=(3, 3, 12, 3), drop_path=0.1, head=512, rank=64,
              params=27_636_310, readme_m=28, tenth_m=27.6),
    "l": dict(dims=(64, 128, 320, 512), depths=(3, 5, 27, 3), drop_path=0.3, head=1024, rank=64,
              params=48_926_550, readme_m=49, tenth_m=48.9),
}
MLP_RATIOS = (8, 8, 4, 4)


def _build_meta(variant: str, **overrides):
    name = f"segnext_{variant}"
    with torch.device("meta"):
        return get_entry(name).make(resolve_options(name, {"num_classes": 150, **overrides}))


def _side(n: int, convs: int) -> int:
    """Output side after `convs` 3x3 stride-2 pad-1 convs (stem: 2, then one per later stage)."""
    for _ in range(convs):
        n = (n + 2 * 1 - 3) // 2 + 1
    return n


# --------------------------------------------------------------------------------------------- size, structure


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_parameter_counts_match_the_official_figures(variant):
    spec = VARIANTS[variant]
    params = sum(p.numel() for p in _build_meta(variant).parameters())
    assert params == spec["params"]
    assert round(params / 1e6) == spec["readme_m"]  # official README: 4M / 14M / 28M / 49M
    assert round(params / 1e6, 1) == spec["tenth_m"]  # to 0.1 M, the precision of the paper's tables
    assert round(params / 1e6) == get_entry(f"segnext_{variant}").published_params_m


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_structure_of_each_variant(variant):
    spec = VARIANTS[variant]
    model = _build_meta(variant)
    backbone, head = model.backbone, model.decode_head
    assert model.output_stride == 8 and model.num_classes == 150
    expected_info = list(zip(spec["dims"], (4, 8, 16, 32), strict=True))
    assert [(i.channels, i.stride) for i in backbone.feature_info] == expected_info
    assert len(backbone.stages) == 4
    in_channels = 3
    for i, stage in enumerate(backbone.stages):
        dim = spec["dims"][i]
        convs = [m for m in stage.patch_embed.modules() if isinstance(m, nn.Conv2d)]
        # stem: two 3x3/2 convs (3 -> dim/2 -> dim); later stages: one 3x3/2 conv; each conv followed by BN
        expected = [(in_channels, dim // 2), (dim // 2, dim)] if i == 0 else [(in_channels, dim)]
        assert [(c.in_channels, c.out_channels) for c in convs] == expected
        assert all(c.kernel_size == (3, 3) and c.stride == (2, 2) and c.padding == (1, 1) for c in convs)
        embed_norms = [m for m in stage.patch_embed.modules() if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm))]
        assert len(embed_norms) == len(convs) and all(isinstance(m, nn.BatchNorm2d) for m in embed_norms)
        assert len(stage.blocks) == spec["depths"][i]
        for block in stage.blocks:
            assert isinstance(block.norm1, nn.BatchNorm2d) and isinstance(block.norm2, nn.BatchNorm2d)
            assert block.norm1.num_features == dim
            assert block.mlp.fc1.out_channels == dim * MLP_RATIOS[i]
            assert block.layer_scale_1.shape == block.layer_scale_2.shape == (dim,)
        assert isinstance(stage.norm, nn.LayerNorm) and stage.norm.normalized_shape == (dim,)
        in_channels = dim
    # the four stage-end norms are the backbone's only LayerNorms
    assert sum(isinstance(m, nn.LayerNorm) for m in backbone.modules()) == 4

    # stochastic depth: linspace(0, rate, sum(depths)) indexed globally across the stages, one rate per block
    rates = [m.drop_prob for m in backbone.modules() if isinstance(m, DropPath)]
    total = sum(spec["depths"])
    assert rates == pytest.approx([spec["drop_path"] * j / (total - 1) for j in range(total)], abs=1e-7)
    assert rates[-1] == pytest.approx(spec["drop_path"])

    # head: stages 2-4 concatenated into the squeeze conv, head width and NMF rank of the official configs
    assert head.in_index == (1, 2, 3)
    assert head.squeeze.conv.in_channels == sum(spec["dims"][1:])
    assert head.squeeze.conv.out_channels == head.align.conv.out_channels == spec["head"]
    assert head.classifier.in_channels == spec["head"] and head.classifier.out_channels == 150
    nmf = head.hamburger.ham
    assert (nmf.channels, nmf.rank, nmf.train_steps, nmf.eval_steps) == (spec["head"], spec["rank"], 6, 7)
    assert nmf.fixed_bases.shape == (1, spec["head"], spec["rank"])


def test_layer_scales_start_at_1e_2_and_follow_the_option():
    model = seglab.create_model("segnext_t", num_classes=6)
    scales = [p for n, p in model.named_parameters() if "layer_scale" in n]
    assert len(scales) == 2 * sum(VARIANTS["t"]["depths"])
    assert all(torch.all(p == 1e-2) for p in scales)
    small = seglab.create_model("segnext_t", num_classes=6, layer_scale_init=1e-5)
    assert all(torch.all(p == 1e-5) for n, p in small.named_parameters() if "layer_scale" in n)


def test_drop_path_rate_override_rescales_the_schedule():
    rates = [m.drop_prob for m in _build_meta("t", drop_path_rate=0.5).backbone.modules() if isinstance(m, DropPath)]
    assert rates == pytest.approx([0.5 * j / 12 for j in range(13)], abs=1e-7)


def _conv(module: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, module.weight, module.bias, module.stride, module.padding, module.dilation, module.groups)


def _bn(module: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    return F.batch_norm(x, module.running_mean, module.running_var, module.weight, module.bias, False, 0.0,
                        module.eps)


def test_stem_and_block_match_the_formulas_of_the_paper():
    model = seglab.create_model("segnext_t", num_classes=6).eval()
    for module in model.backbone.modules():  # non-trivial BN statistics and layer scales
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    stage = model.backbone.stages[1]
    block = stage.blocks[0]
    with torch.no_grad():
        block.layer_scale_1.uniform_(0.5, 1.5)
        block.layer_scale_2.uniform_(0.5, 1.5)
        stem = model.backbone.stages[0].patch_embed
        image = torch.randn(1, 3, 24, 40)
        expected_stem = _bn(stem.bn2, _conv(stem.conv2, F.gelu(_bn(stem.bn1, _conv(stem.conv1, image)))))
        assert torch.allclose(stem(image), expected_stem, atol=1e-5)

        msca = block.attn.msca
        assert msca.square.kernel_size == (5, 5) and msca.square.padding == (2, 2) and msca.square.groups == 64
        assert [(m.kernel_size, m.padding) for m in msca.horizontal] == [((1, k), (0, k // 2)) for k in (7, 11, 21)]
        assert [(m.kernel_size, m.padding) for m in msca.vertical] == [((k, 1), (k // 2, 0)) for k in (7, 11, 21)]
        assert all(m.groups == 64 for m in [*msca.horizontal, *msca.vertical]) and msca.mix.groups == 1
        x = torch.randn(1, 64, 9, 13)
        # x + ls1 * (proj_2(MSCA(GELU(proj_1(u)))) + u), u = BN1(x); MSCA(v) = mix(a + sum strips(a)) * v, a = dw5x5(v)
        u = _bn(block.norm1, x)
        v = F.gelu(_conv(block.attn.proj_1, u))
        a = _conv(msca.square, v)
        pairs = zip(msca.horizontal, msca.vertical, strict=True)
        strips = sum(_conv(vertical, _conv(horizontal, a)) for horizontal, vertical in pairs)
        y = x + block.layer_scale_1[:, None, None] * (_conv(block.attn.proj_2, _conv(msca.mix, a + strips) * v) + u)
        # y + ls2 * fc2(GELU(dw3x3(fc1(BN2(y))))): no activation between fc1 and the depth-wise conv
        hidden = F.gelu(_conv(block.mlp.dwconv, _conv(block.mlp.fc1, _bn(block.norm2, y))))
        expected = y + block.layer_scale_2[:, None, None] * _conv(block.mlp.fc2, hidden)
        assert torch.allclose(block(x), expected, atol=1e-4)


def test_head_ignores_the_stride_4_feature():
    model = seglab.create_model("segnext_t", num_classes=6).eval()
    with torch.no_grad():
        features = model.backbone(torch.randn(1, 3, 64, 80))
        reference = model.decode_head(features)
        assert torch.equal(model.decode_head([torch.randn_like(features[0])] + features[1:]), reference)
        # while each of stages 2-4 does matter
        for i in (1, 2, 3):
            changed = list(features)
            changed[i] = torch.randn_like(features[i])
            assert not torch.allclose(model.decode_head(changed), reference, atol=1e-3)


# --------------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("size", [(33, 47), (77, 50), (128, 96), (17, 9)])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_feature_and_logit_shapes_at_odd_sizes(size, batch, mode):
    model = seglab.create_model("segnext_t", num_classes=6).train(mode == "train")
    x = torch.randn(batch, 3, *size)
    if mode == "train" and batch == 1 and size == (17, 9):
        # stage 4 is 1x1 here: training-mode BatchNorm has a single value per channel, which torch refuses
        assert (_side(17, 5), _side(9, 5)) == (1, 1)
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            model(x)
        return
    with torch.no_grad():
        features = model.backbone(x)
        logits = model(x)
    for i, feature in enumerate(features):
        assert feature.shape == (batch, VARIANTS["t"]["dims"][i], _side(size[0], 2 + i), _side(size[1], 2 + i))
    expected = (_side(size[0], 3), _side(size[1], 3))
    assert expected == (math.ceil(size[0] / 8), math.ceil(size[1] / 8))
    assert logits.shape == (batch, 6, *expected)
    assert torch.isfinite(logits).all()


# ------------------------------------------------------------------------------------- NMF against a reference


def _coef_update(x: torch.Tensor, bases: torch.Tensor, coef: torch.Tensor, eps: float) -> torch.Tensor:
    """One sample: coef * (x^T bases) / (coef (bases^T bases) + eps); x (D, N), bases (D, R), coef (N, R)."""
    numerator = torch.einsum("dn,dr->nr", x, bases)
    denominator = torch.einsum("nr,rs->ns", coef, torch.einsum("dr,ds->rs", bases, bases))
    return coef * numerator / (denominator + eps)


def reference_nmf(
    x: torch.Tensor, bases: torch.Tensor, steps: int, inv_t: float = 1.0, one_step_gradient: bool = False,
    eps: float = 1e-6,
) -> torch.Tensor:
    """The official NMF2D (MD_S = 1), sample by sample: x (B, D, N), starting bases (B, D, R) -> (B, D, N).

    `one_step_gradient` reproduces the original HamNet, whose iterations run without gradient (only the final
    coefficient update is differentiated); SegNeXt removed that.
    """
    outputs = []
    for sample, start in zip(x, bases, strict=True):
        iterate_on = sample.detach() if one_step_gradient else sample
        base = start
        coef = torch.softmax(inv_t * torch.einsum("dn,dr->nr", iterate_on, base), dim=-1)
        for _ in range(steps):
            coef = _coef_update(iterate_on, base, coef, eps)
            numerator = torch.einsum("dn,nr->dr", iterate_on, coef)
            denominator = torch.einsum("dr,rs->ds", base, torch.einsum("nr,ns->rs", coef, coef))
            base = base * numerator / (denominator + eps)
        coef = _coef_update(sample, base, coef, eps)
        outputs.append(torch.einsum("dr,nr->dn", base, coef))
    return torch.stack(outputs)


def _random_bases(batch: int, channels: int, rank: int) -> torch.Tensor:
    """Uniform [0, 1) bases L2-normalised over channels, drawn like the original (global CPU generator)."""
    raw = torch.rand(batch, channels, rank)
    return raw / raw.norm(dim=1, keepdim=True)


@pytest.mark.parametrize("training, steps", [(True, 6), (False, 7)])
def test_nmf_factorize_matches_the_reference_in_float64(training, steps):
    nmf = NMF2D(32, 8).train(training)
    x = torch.relu(torch.randn(2, 32, 35, dtype=torch.float64))
    bases = _random_bases(2, 32, 8).double()
    ours = nmf.factorize(x, bases)
    assert ours.dtype == torch.float64 and ours.shape == (2, 32, 35)
    assert torch.allclose(ours, reference_nmf(x, bases, steps), rtol=0, atol=1e-6)
    # the step count is what tells the modes apart
    other = reference_nmf(x, bases, 13 - steps)
    assert (ours - other).abs().max() > 1e-4
    # the coefficient softmax has temperature 1: the configs' inv_t=100 is overridden by the original
    assert (ours - reference_nmf(x, bases, steps, inv_t=100.0)).abs().max() > 1e-3


def test_nmf_gradient_flows_through_every_unrolled_step():
    nmf = NMF2D(16, 4).train()
    x = torch.relu(torch.randn(1, 16, 20, dtype=torch.float64)).requires_grad_()
    bases = _random_bases(1, 16, 4).double()
    weights = torch.randn(1, 16, 20, dtype=torch.float64)
    (ours,) = torch.autograd.grad((nmf.factorize(x, bases) * weights).sum(), x)
    (full,) = torch.autograd.grad((reference_nmf(x, bases, 6) * weights).sum(), x)
    (one_step,) = torch.autograd.grad((reference_nmf(x, bases, 6, one_step_gradient=True) * weights).sum(), x)
    assert torch.allclose(ours, full, rtol=0, atol=1e-6)
    assert (ours - one_step).abs().max() > 1e-3


@pytest.mark.parametrize("eval_bases", ["fixed", "random"])
def test_nmf_module_draws_its_bases_as_the_original_and_runs_6_or_7_steps(eval_bases):
    nmf = NMF2D(32, 8, eval_bases=eval_bases)
    x = torch.relu(torch.randn(2, 32, 5, 7))
    flat = x.double().reshape(2, 32, 35)
    # training: fresh bases from the global CPU generator, 6 steps
    nmf.train()
    torch.manual_seed(11)
    out = nmf(x)
    torch.manual_seed(11)
    expected = reference_nmf(flat, _random_bases(2, 32, 8).double(), 6)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert torch.allclose(out.double().reshape(2, 32, 35), expected, rtol=1e-4, atol=1e-5)
    # evaluation: 7 steps from the fixed bases (shared by the batch) or from a fresh draw
    nmf.eval()
    torch.manual_seed(12)
    out = nmf(x)
    torch.manual_seed(12)
    if eval_bases == "fixed":
        start = nmf.fixed_bases.double().expand(2, -1, -1)
    else:
        start = _random_bases(2, 32, 8).double()
    expected = reference_nmf(flat, start, 7)
    assert torch.allclose(out.double().reshape(2, 32, 35), expected, rtol=1e-4, atol=1e-5)
    assert (out.double().reshape(2, 32, 35) - reference_nmf(flat, start, 6)).abs().max() > 1e-3


def test_hamburger_with_fixed_bases_matches_a_reference_composition():
    model = seglab.create_model("segnext_t", num_classes=6, ham_rank=8, head_channels=64).eval()
    burger = model.decode_head.hamburger
    for module in burger.modules():  # non-trivial GroupNorm affine parameters
        if isinstance(module, nn.GroupNorm):
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    x = torch.randn(2, 64, 6, 9)
    with torch.no_grad():
        ours = burger(x)
        inner = F.relu(F.conv2d(x, burger.ham_in.conv.weight, burger.ham_in.conv.bias))
        start = burger.ham.fixed_bases.double().expand(2, -1, -1)
        nmf = reference_nmf(inner.double().reshape(2, 64, 54), start, 7).float().reshape(2, 64, 6, 9)
        projected = F.group_norm(F.conv2d(nmf, burger.ham_out.conv.weight), 32, burger.ham_out.norm.weight,
                                 burger.ham_out.norm.bias, burger.ham_out.norm.eps)
        expected = F.relu(x + projected)
    assert burger.ham_out.conv.bias is None and burger.ham_in.conv.bias is not None  # mmcv's bias rule
    assert torch.allclose(ours, expected, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------ bases modes


def test_fixed_eval_bases_are_deterministic_batch_and_rng_independent():
    model = seglab.create_model("segnext_t", num_classes=6).eval()
    x = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        torch.manual_seed(1)
        state = torch.get_rng_state()
        first = model(x)
        assert torch.equal(torch.get_rng_state(), state)  # no draw from the global generator
        torch.manual_seed(2)
        assert torch.equal(model(x), first)
        alone = model(x[1:])
    assert torch.allclose(alone, first[1:], rtol=0, atol=1e-5)


def test_fixed_bases_are_normalised_uniform_draws_kept_out_of_the_state_dict():
    model = seglab.create_model("segnext_t", num_classes=6)
    nmf = model.decode_head.hamburger.ham
    bases = nmf.fixed_bases
    assert bases.shape == (1, 256, 16) and bases.dtype == torch.float32
    assert (bases >= 0).all()
    assert torch.allclose(bases.norm(dim=1), torch.ones(1, 16), atol=1e-6)  # unit columns over channels
    raw = torch.rand(1, 256, 16, generator=torch.Generator().manual_seed(0))  # ham_seed 0
    assert torch.allclose(bases, raw / raw.norm(dim=1, keepdim=True), atol=1e-7)
    other = seglab.create_model("segnext_t", num_classes=6, ham_seed=1).decode_head.hamburger.ham.fixed_bases
    assert not torch.allclose(other, bases)

    # a plain float32 attribute: absent from checkpoints (whose keys are those of "random"), unchanged by casts
    assert "decode_head.hamburger.ham.fixed_bases" not in dict(model.named_buffers())
    model.to(torch.bfloat16)
    assert nmf.fixed_bases.dtype == torch.float32 and torch.equal(nmf.fixed_bases, bases)
    model.float()
    keys = set(model.state_dict())
    assert not any(".ham." in key for key in keys)
    random_model = seglab.create_model("segnext_t", num_classes=6, ham_eval_bases="random")
    assert set(random_model.state_dict()) == keys
    random_model.load_state_dict(model.state_dict(), strict=True)


def test_random_eval_bases_vary_and_reproduce_under_a_seed():
    model = seglab.create_model("segnext_t", num_classes=6, ham_eval_bases="random").eval()
    head = model.decode_head
    with torch.no_grad():
        features = model.backbone(torch.randn(1, 3, 40, 56))
        first, second = head(features), head(features)
        assert not torch.allclose(first, second, atol=1e-4)
        torch.manual_seed(5)
        seeded = head(features)
        torch.manual_seed(5)
        assert torch.equal(head(features), seeded)


def test_training_draws_random_bases_in_both_modes():
    fixed = seglab.create_model("segnext_t", num_classes=6, head_dropout=0.0)
    random_ = seglab.create_model("segnext_t", num_classes=6, head_dropout=0.0, ham_eval_bases="random")
    random_.load_state_dict(fixed.state_dict())
    with torch.no_grad():
        features = fixed.eval().backbone(torch.randn(2, 3, 40, 56))
        for model in (fixed, random_):
            head = model.decode_head.train()
            assert not torch.allclose(head(features), head(features), atol=1e-4)
        # same draw, same output: "fixed" only changes evaluation
        torch.manual_seed(3)
        from_fixed = fixed.decode_head(features)
        torch.manual_seed(3)
        assert torch.equal(random_.decode_head(features), from_fixed)


def test_invalid_eval_bases_is_a_value_error():
    with pytest.raises(ValueError, match="eval_bases must be one of fixed, random, got 'learned'"):
        seglab.create_model("segnext_t", num_classes=6, ham_eval_bases="learned")


# ----------------------------------------------------------------------------------------- autocast, options


def test_nmf_under_bf16_autocast_runs_in_float32_and_returns_the_input_dtype(monkeypatch):
    nmf = NMF2D(32, 8).train()
    seen = []
    factorize = nmf.factorize

    def recording(x, bases):
        out = factorize(x, bases)
        seen.append((x.dtype, bases.dtype, out.dtype))
        return out

    monkeypatch.setattr(nmf, "factorize", recording)
    x = torch.relu(torch.randn(2, 32, 5, 7)).bfloat16()
    torch.manual_seed(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = nmf(x)
    # bmm under an active bf16 autocast would return bf16: float32 here shows the factorisation left it
    assert seen == [(torch.float32, torch.float32, torch.float32)]
    assert out.dtype == torch.bfloat16
    torch.manual_seed(4)
    assert torch.equal(out, nmf(x.float()).bfloat16())


def test_bf16_autocast_forward_and_backward():
    model = seglab.create_model("segnext_t", num_classes=6, drop_path_rate=0.0, head_dropout=0.0).train()
    x = torch.randn(2, 3, 48, 64)
    torch.manual_seed(6)
    with torch.no_grad():
        reference = model(x)
    dtypes = []
    hook = model.decode_head.hamburger.ham.register_forward_hook(
        lambda module, args, out: dtypes.append((args[0].dtype, out.dtype)))
    torch.manual_seed(6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    hook.remove()
    assert dtypes == [(torch.bfloat16, torch.bfloat16)]
    assert torch.isfinite(logits).all()
    scale = reference.abs().max()
    assert (logits.float() - reference).abs().max() <= 0.05 * scale
    logits.float().logsumexp(1).mean().backward()
    grad = model.decode_head.hamburger.ham_in.conv.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert torch.isfinite(model.backbone.stages[0].patch_embed.conv1.weight.grad).all()


def test_create_model_overrides_and_unknown_keys():
    model = seglab.create_model("segnext_t", num_classes=6, ham_rank=8, head_channels=64, ham_train_steps=3,
                                ham_eval_steps=4)
    head = model.decode_head
    nmf = head.hamburger.ham
    assert (nmf.rank, nmf.channels, nmf.train_steps, nmf.eval_steps) == (8, 64, 3, 4)
    assert nmf.fixed_bases.shape == (1, 64, 8)
    assert head.squeeze.conv.out_channels == head.align.conv.out_channels == head.classifier.in_channels == 64
    assert head.classifier.out_channels == model.num_classes == 6
    assert model.model_overrides == dict(ham_rank=8, head_channels=64, ham_train_steps=3, ham_eval_steps=4)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 40, 24)).shape == (1, 6, 5, 3)
    with pytest.raises(TypeError, match=r"unknown override\(s\) 'ham_steps'.*valid: num_classes"):
        seglab.create_model("segnext_t", ham_steps=3)
    assert seglab.list_models("segnext_*") == ["segnext_b", "segnext_l", "segnext_s", "segnext_t"]


# ----------------------------------------------------------------------------------------------------- overfit


def _scene(square: tuple[int, int], disc: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A 64x64 image with a 32x32 square (class 1, red) and a radius-15 disc (class 2, blue) on black."""
    labels = torch.zeros(64, 64, dtype=torch.long)
    labels[square[0] : square[0] + 32, square[1] : square[1] + 32] = 1
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    labels[(yy - disc[0]) ** 2 + (xx - disc[1]) ** 2 <= 15**2] = 2
    image = torch.zeros(3, 64, 64)
    image[0][labels == 1] = 1.0
    image[2][labels == 2] = 1.0
    return image * 2 - 0.5, labels


def test_tiny_overfit_reaches_high_pixel_accuracy():
    scenes = [_scene((4, 4), (46, 44)), _scene((28, 8), (18, 46))]
    images = torch.stack([s[0] for s in scenes])
    labels = torch.stack([s[1] for s in scenes])
    model = seglab.create_model("segnext_t", num_classes=3, drop_path_rate=0.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    model.train()
    for _ in range(50):
        loss = cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        predictions = F.interpolate(model(images), size=(64, 64), mode="bilinear").argmax(1)
    assert (labels == 0).float().mean() < 0.6  # all-background would score below the bar
    assert (predictions == labels).float().mean() >= 0.9
    for c in range(3):  # and every class is found, not only the background
        assert (predictions[labels == c] == c).float().mean() >= 0.8
