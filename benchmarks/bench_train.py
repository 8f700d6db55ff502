"""Training throughput: seglab's training step vs a plain Hugging Face transformers loop, same SegFormer, one process.

The transformers `SegformerForSemanticSegmentation` is built with random weights and converted with
`seglab.convert` (source `hf`) into the seglab model (`strict=True`), so both start from the same function.
Both train on the same batches of random images and labels (150 classes, some pixels at the ignore index 255),
made before timing so that no data loading is measured.

- seglab: the `Trainer`'s per-iteration work: `set_lr` (warm-up + poly), `model.forward_train`,
  `seglab.losses.segmentation_loss`, the finiteness check, `zero_grad`, `backward`, AdamW over seglab's
  parameter groups (the ADE20K recipe's `paramwise`: head lr x10, no decay on norms and position blocks).
- transformers: `outputs = model(pixel_values, labels=labels)`, `outputs.loss.backward()`, AdamW step, as in
  the transformers semantic-segmentation fine-tuning examples.

Both compute the loss on the logits upsampled (bilinear) to the label size, averaged over non-ignored pixels; the
first batch's loss is computed by both with dropout and drop-path off and the difference printed. Timed steps
alternate (seglab, transformers, seglab, ...) so that load from other processes hits both alike; medians.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_train.py --size 512 --batch 2 --iters 10 --threads 2

On a machine shared with other jobs, run with `OMP_WAIT_POLICY=PASSIVE`: spinning OpenMP threads wait for
descheduled siblings in every parallel region and timings become erratic. `--profile N` profiles N seglab steps
with `torch.profiler` after the timing and prints where the time goes.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from bench_segformer import _timed, build_pair  # the same weight-sharing pair as the inference benchmark
from torch import nn

from seglab.backbones.mit import MIT_CONFIGS
from seglab.config import load_config
from seglab.engine.optim import build_optimizer, set_lr
from seglab.layers.drop import DropPath
from seglab.losses import segmentation_loss

IGNORE_INDEX = 255
STOCHASTIC_LAYERS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, DropPath)
RECIPE = Path(__file__).resolve().parents[1] / "configs" / "segformer" / "segformer_b0_ade20k-512_160k.yaml"


def make_batches(count: int, batch: int, size: int, num_classes: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`count` (images (B, 3, S, S), labels (B, S, S) int64) pairs; ~5 % of the label pixels are ignored."""
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(count):
        images = torch.randn(batch, 3, size, size, generator=generator)
        labels = torch.randint(0, num_classes, (batch, size, size), generator=generator)
        ignored = torch.rand(batch, size, size, generator=generator) < 0.05
        batches.append((images, labels.masked_fill(ignored, IGNORE_INDEX)))
    return batches


def _stochastic_layers_off(model: nn.Module) -> list[nn.Module]:
    """Puts dropout and drop-path layers in eval mode (the rest stays in train mode); returns them."""
    from transformers.models.segformer.modeling_segformer import SegformerDropPath

    layers = [m for m in model.modules() if isinstance(m, STOCHASTIC_LAYERS + (SegformerDropPath,))]
    for layer in layers:
        layer.eval()
    return layers


def first_step_losses(
    ours: nn.Module, hf: nn.Module, images: torch.Tensor, labels: torch.Tensor
) -> tuple[float, float, float]:
    """Both training losses on one batch and the largest logit difference, in train mode (batch-statistics BN)
    without dropout and drop-path."""
    align_corners = ours.decode_head.align_corners
    switched = _stochastic_layers_off(ours) + _stochastic_layers_off(hf)
    # the BN running statistics would move: put them back so that the timed loops start from the converted state
    saved = [(buffer, buffer.clone()) for model in (ours, hf) for buffer in model.buffers()]
    with torch.no_grad():
        logits, aux = ours.forward_train(images)
        loss_ours, _ = segmentation_loss(logits.float(), [a.float() for a in aux], labels, None, [], IGNORE_INDEX,
                                         align_corners)
        outputs = hf(pixel_values=images, labels=labels)
    for buffer, value in saved:
        buffer.copy_(value)
    for layer in switched:
        layer.train()
    return float(loss_ours), float(outputs.loss), float((logits - outputs.logits).abs().max())


def seglab_step_fn(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> Callable[[], float]:
    """One call = one iteration of `seglab.engine.trainer.Trainer.train` (fp32, no grad clipping, no logging)."""
    recipe = load_config(RECIPE)
    optimizer = build_optimizer(model, recipe.optim)
    align_corners = bool(model.decode_head.align_corners)
    state = {"iteration": 0}

    def step() -> float:
        images, labels = batches[state["iteration"] % len(batches)]
        set_lr(optimizer, state["iteration"], recipe.schedule)
        with torch.autocast("cpu", enabled=False):  # the trainer's autocast context with amp: none
            logits, aux_logits = model.forward_train(images)
        loss, _ = segmentation_loss(logits.float(), [a.float() for a in aux_logits], labels, None, [],
                                    IGNORE_INDEX, align_corners)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"seglab loss is {loss.item()} at iteration {state['iteration']}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state["iteration"] += 1
        return loss.item()

    return step


def hf_step_fn(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> Callable[[], float]:
    """One call = one iteration of a plain transformers training loop."""
    recipe = load_config(RECIPE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.optim.lr, betas=tuple(recipe.optim.betas),
                                  weight_decay=recipe.optim.weight_decay)
    state = {"iteration": 0}

    def step() -> float:
        pixel_values, labels = batches[state["iteration"] % len(batches)]
        optimizer.zero_grad(set_to_none=True)
        outputs = model(pixel_values=pixel_values, labels=labels)
        outputs.loss.backward()
        optimizer.step()
        state["iteration"] += 1
        return outputs.loss.item()

    return step


def profile_steps(step: Callable[[], float], steps: int, rows: int) -> None:
    """Prints the ops that take the most CPU time over `steps` seglab steps, overall and by input shape."""
    from torch.profiler import ProfilerActivity, profile, record_function

    def labelled_step() -> None:
        with record_function("seglab_step"):
            step()

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            labelled_step()
    averages = prof.key_averages()
    print(averages.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=60))
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=rows,
                                                               max_name_column_width=45, max_shapes_column_width=70))
    total = sum(e.self_cpu_time_total for e in averages) / steps / 1000
    print(f"profiled {steps} steps, {total:.1f} ms of op time per step")


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="b0", choices=sorted(MIT_CONFIGS))
    parser.add_argument("--size", type=int, default=512, help="square crop side")
    parser.add_argument("--batch", type=int, default=2, help="images per iteration")
    parser.add_argument("--iters", type=int, default=10, help="timed iterations per loop")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations per loop first")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--num-classes", type=int, default=150)
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="then profile N seglab steps")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    ours, hf = build_pair(args.variant, args.num_classes)  # transformers' default loss ignore index is 255 too
    ours.train()
    hf.train()
    batches = make_batches(4, args.batch, args.size, args.num_classes)
    loss_ours, loss_hf, logit_diff = first_step_losses(ours, hf, *batches[0])

    torch.manual_seed(0)
    step_ours, step_hf = seglab_step_fn(ours, batches), hf_step_fn(hf, batches)
    for _ in range(args.warmup):
        step_ours()
        step_hf()
    times_ours, times_hf = [], []
    for _ in range(args.iters):
        times_ours.append(_timed(step_ours))
        times_hf.append(_timed(step_hf))

    med_ours, med_hf = statistics.median(times_ours), statistics.median(times_hf)
    ratio = med_hf / med_ours  # iterations per second, seglab over transformers
    print(f"SegFormer-{args.variant.upper()} training, {args.size}x{args.size} batch {args.batch}, "
          f"{args.num_classes} classes, fp32, {args.threads} threads, {args.iters} interleaved iterations per loop "
          f"after {args.warmup} warm-up")
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    print(f"first-batch loss (no dropout): seglab {loss_ours:.6f}  transformers {loss_hf:.6f}  "
          f"|diff| {abs(loss_ours - loss_hf):.2e}  (max |logit diff| {logit_diff:.2e})")
    for name, median, times in (("seglab", med_ours, times_ours), ("transformers", med_hf, times_hf)):
        print(f"{name:<12} {1 / median:6.3f} it/s  median {median * 1000:8.1f} ms  (min {min(times) * 1000:.1f})")
    print(f"ratio seglab/transformers (it/s) {ratio:.3f}   target >= 1.2")
    if args.profile:
        profile_steps(step_ours, args.profile, rows=30)
    return {"seglab_its": 1 / med_ours, "hf_its": 1 / med_hf, "ratio": ratio,
            "loss_diff": abs(loss_ours - loss_hf)}


if __name__ == "__main__":
    main()
