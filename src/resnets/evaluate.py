"""Top-1 / top-5 error of a model on an in-memory dataset."""

import contextlib

import torch
import torch.nn.functional as F

from .data import BatchLoader, normalize


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


@torch.no_grad()
def evaluate(model, ds, mean, std, device, bf16: bool = False, batch_size: int = 500, workers: int = 0) -> dict:
    """{"loss", "top1_error", "top5_error", "images"} of `model` (put in eval mode here) on `ds`."""
    was_training = model.training
    model.eval()
    k = min(5, model.config.num_classes)
    loss = top1 = topk = 0.0
    for images, labels in BatchLoader(ds, batch_size, shuffle=False, workers=workers).epoch(0):
        x = normalize(images.to(device), mean, std).contiguous(memory_format=torch.channels_last)
        labels = labels.to(device)
        with autocast(device, bf16):
            logits = model(x).float()
        loss += F.cross_entropy(logits, labels, reduction="sum").item()
        hits = logits.topk(k, 1).indices == labels[:, None]  # (B, k)
        top1 += (~hits[:, 0]).sum().item()
        topk += (~hits.any(1)).sum().item()
    model.train(was_training)
    n = len(ds)
    return {"loss": loss / n, "top1_error": top1 / n, "top5_error": topk / n, "images": n}
