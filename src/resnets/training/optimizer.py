"""The optimizer a run trains with: SGD over parameter groups that carry their own lr and weight decay."""

import torch

from ..config import OptimSection
from ..models import ResNet


def sgd(model: ResNet, optim: OptimSection, lr: float, device: torch.device) -> torch.optim.SGD:
    """SGD with momentum at `lr` (optim.lr times the processes' batch scale, OptimSection) over `model`'s trainable
    parameters, grouped as param_groups says. On a GPU the update is one fused pass over all the weights (the
    default, foreach, makes several)."""
    return torch.optim.SGD(param_groups(model, optim, lr), lr=lr, momentum=optim.momentum, nesterov=optim.nesterov,
                           weight_decay=optim.weight_decay, fused=True if device.type == "cuda" else None)


def param_groups(model: ResNet, optim: OptimSection, lr: float) -> list:
    """What SGD updates: the parameters that are not frozen, grouped by their lr and weight decay.

    - optim.backbone_lr_factor below 1 (fine-tuning): the classifier at `lr`, the rest (the backbone) at
      lr x backbone_lr_factor.
    - optim.decay_bn_and_bias false: no weight decay on the 1-d parameters (BN's scales and shifts, the classifier's
      bias), whose size does not set the scale of what the next BN normalises; the paper decays every weight
      (Caffe's default), and so do the paper recipes.
    With neither, one plain list, which keeps the optimizer state of runs from before groups existed resumable.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    if optim.backbone_lr_factor == 1 and optim.decay_bn_and_bias:
        return trainable
    head = {id(p) for p in model.fc.parameters()}
    groups = {}  # (lr, weight decay) -> parameters, in the model's order: the backbone's first
    for p in trainable:
        decay = optim.weight_decay if optim.decay_bn_and_bias or p.dim() > 1 else 0.0
        groups.setdefault((lr if id(p) in head else lr * optim.backbone_lr_factor, decay), []).append(p)
    return [{"params": params, "lr": group_lr, "weight_decay": decay} for (group_lr, decay), params in groups.items()]
