#!/usr/bin/env python
"""What meeting at every step costs the paper's two workers, on this CPU.

Two processes of one thread each train --network on a fixed batch of --batch random images (no data pipeline),
as `resnets train` steps: channels_last, bf16 autocast where the CPU does bf16 natively, SGD. Three ways, in
interleaved rounds: "alone" (no exchange: what two single-threaded processes make side by side), "all_reduce"
(the gradients averaged by one gloo all_reduce per step) and "ddp" (DistributedDataParallel, as the trainer
averages them). Prints images/s of both processes together per round, and a table of medians.

    OMP_NUM_THREADS=1 python studies/two_workers.py --steps 100 --rounds 2
"""

import argparse
import time
from statistics import median

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from resnets import create_model, runtime

WAYS = ("alone", "all_reduce", "ddp")


def worker(rank: int, way: str, args, port: int, results) -> None:
    torch.set_num_threads(1)
    runtime.keep_freed_memory()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = create_model(args.network).to(memory_format=torch.channels_last)
    stepped = torch.nn.parallel.DistributedDataParallel(model) if way == "ddp" else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(args.batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,))
    bf16 = runtime.native_bf16_cpu()
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            dist.barrier()
            t0 = time.perf_counter()
        with runtime.autocast(torch.device("cpu"), bf16):
            logits = stepped(x).float()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(logits, y).backward()
        if way == "all_reduce":
            grads = [p.grad for p in model.parameters()]
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)  # the sum of both processes' gradients: halve it for their mean
            for g, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
                g.copy_(part.view_as(g) / 2)
        optimizer.step()
    results.put(args.batch * args.steps / (time.perf_counter() - t0))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="resnet20")
    parser.add_argument("--batch", type=int, default=64, help="images per process per step (64: the recipe's 128 / 2)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--port", type=int, default=29533)
    args = parser.parse_args()
    precision = "bf16 autocast" if runtime.native_bf16_cpu() else "fp32"
    print(f"{runtime.describe()}; {args.network}, 2 processes x 1 thread x {args.batch} images, {precision}")
    context = mp.get_context("spawn")
    rates = {way: [] for way in WAYS}
    for r in range(args.rounds):
        for way in WAYS:
            results = context.SimpleQueue()
            procs = [context.Process(target=worker, args=(rank, way, args, args.port, results)) for rank in (0, 1)]
            for p in procs:
                p.start()
            for p in procs:
                p.join()
            if any(p.exitcode for p in procs):
                raise SystemExit(f"a {way} worker failed (exit {[p.exitcode for p in procs]})")
            rates[way].append(results.get() + results.get())
            print(f"round {r + 1} {way}: {rates[way][-1]:.0f} images/s", flush=True)
    alone = median(rates["alone"])
    print("\n| way | images/s (median, range) | vs alone |\n|---|---:|---:|")
    for way in WAYS:
        rate = median(rates[way])
        print(f"| {way} | {rate:.0f} ({min(rates[way]):.0f}-{max(rates[way]):.0f}) | {rate / alone:.2f}x |")


if __name__ == "__main__":
    main()
