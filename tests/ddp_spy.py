"""`resnets ARGS` under torchrun, watched by two test spies (tests/test_distributed.py launches it).

    torchrun ... tests/ddp_spy.py DUMP_DIR [--bn-eval] -- train --recipe ...

Every evaluation the training loop makes first saves this process's model state to DUMP_DIR/rank<R>-<n>.pt, so
the test can compare the ranks' weights. --bn-eval keeps BatchNorm layers in eval mode during training (running
statistics instead of the batch's): each image's gradient then does not depend on which other images share its
batch, so 2 processes with batch b must train exactly like 1 with batch 2b (PyTorch's SyncBatchNorm, the other
way to get there, runs on GPUs only).
"""

import sys
from pathlib import Path

import torch
from torch import nn

import resnets.training.loop
from resnets import distributed
from resnets.cli import main
from resnets.models import ResNet


def keep_bn_in_eval_mode(model: nn.Module, mode: bool = True) -> nn.Module:
    nn.Module.train(model, mode)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.train(False)
    return model


def spy_on_evaluate(dump: Path):
    evaluate, calls = resnets.training.loop.evaluate, []

    def watched(model, *args, **kwargs):
        calls.append(None)
        torch.save(model.state_dict(), dump / f"rank{distributed.rank()}-{len(calls)}.pt")
        return evaluate(model, *args, **kwargs)

    return watched


if __name__ == "__main__":
    dump, options, args = Path(sys.argv[1]), sys.argv[2:sys.argv.index("--")], sys.argv[sys.argv.index("--") + 1:]
    dump.mkdir(parents=True, exist_ok=True)
    resnets.training.loop.evaluate = spy_on_evaluate(dump)
    if "--bn-eval" in options:
        ResNet.train = keep_bn_in_eval_mode
    sys.exit(main(args))
