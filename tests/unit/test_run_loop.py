"""The run loop on a toy task: norm_eval freezes every normalisation layer with running statistics, the task
interface is all a task needs, and keep_checkpoints has one meaning."""

import json

import pytest
import torch
from torch import nn

from seglab.checkpoint import save_weights
from seglab.config import load_config
from seglab.engine.loop import RunLoop, has_running_stats, set_train_mode

STATEFUL = ("bn1d", "bn2d", "bn3d", "sync_bn", "in2d_tracked")
STATELESS = ("in2d", "gn", "ln")


class Norms(nn.Module):
    """A conv followed by every kind of normalisation layer, each on the same features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1d, self.bn2d, self.bn3d = nn.BatchNorm1d(4), nn.BatchNorm2d(4), nn.BatchNorm3d(4)
        self.sync_bn = nn.SyncBatchNorm(4)
        self.in2d_tracked = nn.InstanceNorm2d(4, affine=True, track_running_stats=True)
        self.in2d = nn.InstanceNorm2d(4, affine=True)
        self.gn, self.ln = nn.GroupNorm(2, 4), nn.LayerNorm([4, 6, 6])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.conv(x)
        outs = [self.bn1d(f.mean((2, 3))), self.bn2d(f), self.bn3d(f[:, :, None]), self.sync_bn(f),
                self.in2d_tracked(f), self.in2d(f), self.gn(f), self.ln(f)]
        return sum(o.pow(2).mean() for o in outs)


class ToyTask(RunLoop):
    """The whole of a task: its data, its step, its checkpoint format."""

    def batches(self):  # batch i drawn from seed i: the stream restarts anywhere
        step = self.iteration
        while True:
            yield torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(step))
            step += 1

    def fetch(self, batches):
        return next(batches).to(self.device)

    def forward(self, module, batch):
        return module(batch)

    def loss(self, outputs, batch):
        return outputs, {}

    def save_weights(self, path, module, extra):
        save_weights(path, module.state_dict(), "toy_norms", None, extra=extra)


def toy_config(work_dir, *settings):
    return load_config(None, ["optim.name=sgd", "optim.lr=0.1", "schedule.iters=3", "schedule.warmup_iters=0",
                              "train.log_interval=1", "train.checkpoint_interval=1", f"train.work_dir={work_dir}",
                              *settings])


def test_running_stats_are_recognised_by_what_the_layer_keeps():
    model = Norms()
    assert {name for name, m in model.named_children() if has_running_stats(m)} == set(STATEFUL)


@pytest.mark.parametrize("norm_eval", [True, False])
def test_norm_eval_freezes_every_norm_with_running_stats(tmp_path, norm_eval):
    torch.manual_seed(0)
    model = Norms()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    task = ToyTask(toy_config(tmp_path / "run", f"train.norm_eval={str(norm_eval).lower()}"), model)
    task.train(progress=False)
    after = model.state_dict()
    for name in STATEFUL:
        layer = getattr(model, name)
        assert layer.training is not norm_eval, name
        moved = [not torch.equal(before[k], after[k]) for k in (f"{name}.running_mean", f"{name}.running_var")]
        assert moved == [not norm_eval] * 2, name
        assert not torch.equal(before[f"{name}.weight"], after[f"{name}.weight"]), name  # the affine still trains
    for name in STATELESS:  # no statistics to freeze: they train normally
        assert getattr(model, name).training, name
        assert not torch.equal(before[f"{name}.weight"], after[f"{name}.weight"]), name
    set_train_mode(model, norm_eval=False)
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize(("keep", "kept"), [(0, [1, 2, 3]), (1, [3]), (2, [2, 3])])
def test_keep_checkpoints_keeps_the_newest_n_and_zero_keeps_all(tmp_path, keep, kept):
    work = tmp_path / "run"
    ToyTask(toy_config(work, f"train.keep_checkpoints={keep}"), Norms()).train(progress=False)
    assert sorted(int(p.name[5:-12]) for p in work.glob("iter_*.safetensors")) == kept
    assert sorted(int(p.name[5:-9]) for p in work.glob("iter_*.state.pt")) == kept
    assert json.loads((work / "latest.json").read_text())["iteration"] == 3


def test_toy_task_resumes_exactly(tmp_path):
    torch.manual_seed(0)
    straight = Norms()
    reference = {k: v.clone() for k, v in straight.state_dict().items()}
    ToyTask(toy_config(tmp_path / "a"), straight).train(progress=False)
    paused = Norms()
    paused.load_state_dict(reference)
    ToyTask(toy_config(tmp_path / "b"), paused).train(progress=False, stop_at=1)
    resumed = Norms()
    ToyTask(toy_config(tmp_path / "b"), resumed).train(progress=False, resume=True)
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    records = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if r["kind"] == "train"] == [1, 2, 3]
