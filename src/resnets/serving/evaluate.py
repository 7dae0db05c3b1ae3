"""Top-1 / top-5 error of a model on a dataset, under one of the paper's test protocols, on one or N processes;
`evaluate_checkpoint`, what `resnets eval` measures."""

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import distributed, runtime
from ..config import DataSection
from ..data import BatchLoader, default_workers, load_eval_set, match_classes, normalize
from ..data.decode import to_channels
from ..data.imagenet import PAPER_SCALES
from ..errors import UserError
from ..preprocessing import Preprocessing
from .weights import load_model

# The test protocols, with the images per evaluation batch of each: ten crops make ten network inputs per image,
# multi-scale testing runs one at a time. "flip" (the centre view and its mirror image, scores averaged) is not the
# paper's: fast CIFAR training reports it beside the single crop (e.g. airbench); it works on any data.
EVAL_BATCH = {"center": 500, "flip": 250, "10crop": 50, "multiscale": 8}
TEST_PROTOCOLS = tuple(EVAL_BATCH)
FOLDER_VIEWS = ("10crop", "multiscale")  # cut from the decoded image (ImageNetFolder): image folders only
RESULT = ("top1_error", "top5_error", "images", "loss")  # what each protocol's result holds, after its name


def evaluate_checkpoint(source: str | Path, data: str, protocols: Sequence[str] = ("center",), device: str = "auto",
                        precision: str = "fp32", val_split: int = 0, split_seed: int = 0,
                        scales: Sequence[int] | None = None) -> list[dict]:
    """[{"protocol", "top1_error", "top5_error", "images", "loss"} for each of `protocols`] of the network `source`
    names (anything load_model reads) on `data`: "digits", a CIFAR archive or folder (its test split), or an image
    folder (its val/ or test/ part, else all of it), each image prepared as the network's preprocessing says.

    With `val_split`, the training images a run with data.val_split = val_split and data.split_seed = split_seed
    held out. "10crop" and "multiscale" (at `scales`, default the paper's) need an image folder. Under torchrun
    each process scores its share and every process gets the same results.
    """
    unknown = [p for p in protocols if p not in TEST_PROTOCOLS]
    if unknown:
        raise UserError(f"unknown test protocol {', '.join(unknown)}; use {', '.join(TEST_PROTOCOLS)}")
    device = distributed.setup(runtime.pick_device(str(device)))  # under torchrun: this process's GPU, or the CPU
    model, info = load_model(source, device)
    pre = info["preprocessing"]
    folder = Path(data).is_dir()
    cut = [p for p in protocols if p in FOLDER_VIEWS]
    if cut and not folder:
        raise UserError(f"--protocol {','.join(cut)} needs an image folder; {data} is not one")
    # Images of any size, resized then cropped as the protocol says, when the network was trained so (resize >
    # input_size) or a protocol cuts views of its own; else the fixed-size folder path.
    views = folder and (pre.resize != pre.input_size or bool(cut))
    section = _data_section(pre, folder, views, val_split, split_seed)
    ds = load_eval_set(data, section)
    _, height, width = ds.image_shape
    if (height, width) != pre.shape[1:]:  # channels are converted (to_channels), as predict converts them
        raise UserError(f"{data} holds {width}x{height} images but the model takes {pre.input_size}x{pre.input_size}")
    ds = match_classes(ds, info["classes"])
    bf16 = runtime.use_bf16(precision, device)
    model = model.to(memory_format=torch.channels_last)
    results = []
    for protocol in protocols:
        cut_as = protocol if protocol in FOLDER_VIEWS else "center"  # flip mirrors the centre view itself
        part = ds.with_protocol(cut_as, scales or PAPER_SCALES) if views else ds
        result = evaluate(model, part, pre.mean.to(device), pre.std.to(device), device, bf16,
                          batch_size=EVAL_BATCH[protocol], workers=default_workers(section.workers),
                          flip=protocol == "flip")
        results.append({"protocol": protocol, **{k: result[k] for k in RESULT}})
    return results


def _data_section(pre: Preprocessing, folder: bool, views: bool, val_split: int, split_seed: int) -> DataSection:
    """How load_eval_set reads the data for a network of `pre`: an image folder at the network's input size, cut
    into the protocols' views from its resize side when `views`; only the held-out images decoded (streamed)
    with a val_split, not the whole training part."""
    return DataSection(image_size=pre.input_size if folder else 0, cache_dir="",
                       crop=pre.input_size if views else 0, resize=pre.resize if views else 0,
                       val_split=val_split, split_seed=split_seed,
                       loader="stream" if val_split and folder else "auto")


@torch.no_grad()
def evaluate(model, ds, mean, std, device, bf16: bool = False, batch_size: int = 500, workers: int = 0,
             flip: bool = False) -> dict:
    """{"loss", "top1_error", "top5_error", "images"} of `model` (put in eval mode here) on `ds`.

    An image's score is the softmax averaged over its views (one, unless ds.protocol asks for ten crops or
    several scales; with `flip`, each image and its mirror image); the loss is the cross-entropy of that average. Under torchrun each process scores its
    share of the images (every image in exactly one share, nothing padded) and the sums are added up over the
    processes, so every image counts once whatever the number of processes. Unreadable images (label -1, see
    ImageNetFolder) are left out.
    """
    was_training = model.training
    model.eval()
    k = min(5, model.config.num_classes)
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top-1 errors, top-k errors, images
    loader = BatchLoader(ds, batch_size, shuffle=False, workers=workers, rank=distributed.rank(),
                         world=distributed.world_size())
    for images, labels in loader.epoch(0):
        readable = labels >= 0
        log_p = image_scores(model, images, mean, std, device, bf16, flip)[readable.to(device)]
        labels = labels[readable].to(device)
        hits = log_p.topk(k, 1).indices == labels[:, None]  # (B, k)
        sums += torch.stack([F.nll_loss(log_p, labels, reduction="sum").double(), (~hits[:, 0]).sum().double(),
                             (~hits.any(1)).sum().double(), torch.tensor(len(labels), dtype=torch.float64,
                                                                        device=device)])
    model.train(was_training)
    loss, top1, topk, n = distributed.all_sum(sums).tolist()
    n = max(n, 1)
    return {"loss": loss / n, "top1_error": top1 / n, "top5_error": topk / n, "images": int(n)}


def image_scores(model, images, mean, std, device, bf16: bool = False, flip: bool = False) -> torch.Tensor:
    """(B, K) log of each image's softmax scores averaged over its views.

    `images`: uint8 (B, C, H, W), one view each, or two with `flip` (the image and its mirror image); (B, V, C, H,
    W), V views of one size each (ten crops); or a list per image of views of different sizes (multi-scale), run
    one by one (the network is fully convolutional: its global average pool takes any size).
    """
    if isinstance(images, list):
        return torch.cat([_log_mean_softmax(torch.cat([_logits(model, view[None], mean, std, device, bf16)
                                                       for view in views]), len(views)) for views in images])
    if images.dim() == 5:
        views = images
    elif flip:
        views = torch.stack([images, images.flip(-1)], 1)  # (B, 2, C, H, W)
    else:
        views = images[:, None]
    return _log_mean_softmax(_logits(model, views.flatten(0, 1), mean, std, device, bf16), views.shape[1])


def _log_mean_softmax(logits: torch.Tensor, views: int) -> torch.Tensor:
    """(B * V, K) logits, V consecutive rows per image -> (B, K) log of the mean of their softmax."""
    log_p = logits.log_softmax(1).unflatten(0, (-1, views))
    return log_p.logsumexp(1) - math.log(views)


def _logits(model, images: torch.Tensor, mean, std, device, bf16: bool) -> torch.Tensor:
    x = to_channels(images.to(device, non_blocking=True), model.config.in_channels)  # grey <-> RGB, as predict does
    if mean.dim() == 3 and mean.shape[-1] > 1 and mean.shape[-2:] != x.shape[-2:]:
        # A per-pixel mean (of crop x crop images) for an input of another size (multi-scale testing): the
        # mean image resized to it. The paper does not say what it subtracted there; the mean image is nearly
        # flat on ImageNet, so the choice hardly matters.
        mean = F.interpolate(mean[None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0]
    x = normalize(x, mean, std).contiguous(memory_format=torch.channels_last)
    with runtime.autocast(device, bf16):
        return model(x).float()

