"""Runs an mmsegmentation 1.2.2 model with random weights; executed by the side environment's python (`mmseg_env`).

Usage: `python mmseg_runner.py SPEC.json [SPEC.json ...]`. Never imports seglab. A spec (JSON):

- `config`: a config file of mmseg's own tree, relative to `mmseg/.mim/configs` (e.g.
  `segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py`);
- `options`: optional `{dotted.key: value}` edits merged into it (`Config.merge_from_dict`, list indices allowed:
  `model.auxiliary_head.0.in_channels`), to shrink a model where the seglab model takes the same options;
- `part`: `segmentor` (default) or `pretrained_backbone`: an ImageNet file is made from a backbone built with
  `model.backbone` updated by `source_options` (e.g. another `img_size`, a final norm), and `model.backbone` loads it
  through mmseg's own `init_weights` (`init_cfg=dict(type='Pretrained', ...)`: position-embedding resize,
  `strict=False`); `state/` then holds the file and `feat/` the loading backbone's outputs;
- `seed`: the weights' seed (`testkit.randomize_`, then token/position embeddings redrawn from N(0, 0.5^2) so that
  they matter); `input_shape` and `input_seed`: the N(0, 1) input; `forward_seed`: if given, `torch.manual_seed` right
  before the forward (SegNeXt's NMF draws its bases from the global generator at every forward); `calibrate_bn`:
  BN statistics measured on a random batch (then perturbed) instead of drawn, for deep BN networks (HRNet), whose
  activations would otherwise grow to ~1e4;
- `output`: the `.safetensors` file to write: `state/<key>` (the state dict as mmseg saves it), `input`, `feat/<i>`
  (the backbone's outputs, after the neck if any), `logits` (`decode_head.forward`: the encoder-decoder's `_forward`,
  at the head's stride, before any resize), `aux/<j>` (each auxiliary head's `forward`).

SyncBN is built as BN (the same numerics in eval). No pretrained weights are loaded: `init_weights` is called only
for `pretrained_backbone`, on the file the runner wrote.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: testkit (torch only)
from testkit import randomize_


def _sync_bn_to_bn(node):
    if isinstance(node, dict):
        return {k: ("BN" if k == "type" and v == "SyncBN" else _sync_bn_to_bn(v)) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return type(node)(_sync_bn_to_bn(v) for v in node)
    return node


def _randomize(model: torch.nn.Module, seed: int) -> None:
    randomize_(model, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for t in model.state_dict().values():
            # token and position embeddings (1, N, C) and class embeddings: O(1) values instead of 1/sqrt(N*C)
            if t.is_floating_point() and t.ndim == 3 and t.shape[0] == 1:
                t.copy_(0.5 * torch.randn(t.shape, generator=gen))


def _calibrate_batchnorm(model: torch.nn.Module, forward, shape: list[int], seed: int) -> None:
    """BN statistics measured on a random batch in train mode (so that activations stay O(1) through a hundred
    convolutions), then perturbed; the affine parameters stay random."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    gen = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # cumulative average: one batch sets the statistics
        model.train()
        forward(torch.randn([2, *shape[1:]], generator=gen))
        for norm in norms:
            norm.running_mean.add_(0.1 * torch.randn(norm.running_mean.shape, generator=gen))
            norm.running_var.mul_(torch.empty(norm.running_var.shape).uniform_(0.8, 1.25, generator=gen))


def run(spec_path: str) -> None:
    import mmseg
    from mmengine.config import Config, ConfigDict
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    from safetensors.torch import save_file

    spec = json.loads(Path(spec_path).read_text())
    configs = Path(mmseg.__file__).parent / ".mim" / "configs"
    cfg = Config.fromfile(str(configs / spec["config"]))
    if spec.get("options"):
        cfg.merge_from_dict(spec["options"], allow_list_keys=True)
    init_default_scope("mmseg")
    model_cfg = ConfigDict(_sync_bn_to_bn(cfg.model.to_dict()))
    torch.manual_seed(0)
    part = spec.get("part", "segmentor")
    saved = None
    if part == "pretrained_backbone":
        source = MODELS.build(ConfigDict({**model_cfg["backbone"], **spec.get("source_options", {})}))
        _randomize(source, spec["seed"])
        saved = source.state_dict()
        pretrained = str(Path(spec["output"]).with_suffix(".pretrained.pth"))
        torch.save(saved, pretrained)
        target = {**model_cfg["backbone"], "init_cfg": {"type": "Pretrained", "checkpoint": pretrained}}
        target.pop("pretrained", None)
        model = MODELS.build(ConfigDict(target))
        model.init_weights()
        Path(pretrained).unlink()
    else:
        model_cfg.pop("data_preprocessor", None)
        model = MODELS.build(model_cfg)
        _randomize(model, spec["seed"])
    if spec.get("calibrate_bn"):
        forward = model if part != "segmentor" else lambda x: model.decode_head.forward(model.extract_feat(x))
        _calibrate_batchnorm(model, forward, spec["input_shape"], spec["seed"])
    model.eval()

    image = torch.randn(spec["input_shape"], generator=torch.Generator().manual_seed(spec["input_seed"]))
    out: dict[str, torch.Tensor] = {"input": image}
    with torch.no_grad():
        if spec.get("forward_seed") is not None:
            torch.manual_seed(spec["forward_seed"])
        if part != "segmentor":
            feats = model(image)
        else:
            feats = model.extract_feat(image)
            out["logits"] = model.decode_head.forward(feats)
            if model.with_auxiliary_head:
                aux = model.auxiliary_head
                for j, head in enumerate(aux if isinstance(aux, torch.nn.ModuleList) else [aux]):
                    out[f"aux/{j}"] = head.forward(feats)
    for i, f in enumerate(feats):
        out[f"feat/{i}"] = f
    for key, value in (model.state_dict() if saved is None else saved).items():
        out[f"state/{key}"] = value
    save_file({k: v.detach().clone().contiguous() for k, v in out.items()}, spec["output"],
              metadata={"mmseg": mmseg.__version__, "torch": torch.__version__})


def main(spec_paths: list[str]) -> int:
    """Runs every spec (one import of mmseg for all); a failing spec is reported and the others still run."""
    failed = 0
    for path in spec_paths:
        try:
            run(path)
        except Exception:  # noqa: BLE001  (reported per spec, the caller names the spec whose output is missing)
            failed += 1
            print(f"--- {path} failed:\n{traceback.format_exc()}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
