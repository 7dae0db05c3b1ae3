"""`resnets <job>`: one subcommand per job, each a thin wrapper over a library function."""

import argparse
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

import torch

from . import __version__
from .arguments import SOURCE, Parser, add_images, at_least, integers, parse, protocols
from .errors import UserError, first_line
from .terminal import ReaderGone, checked_stdout, plain, shown

DEFAULT_RECIPE = "digits/resnet20"  # the embedded default: trains anywhere, no download


def cmd_summary(args) -> None:
    from .models import list_models
    from .models.summary import describe, markdown_table, summarize_preset

    names = args.names or list_models()
    summaries = [summarize_preset(name, args.input_size) for name in names]
    if args.json:
        out = [s.to_dict() for s in summaries]
        print(json.dumps(out[0] if len(out) == 1 else out))
    else:
        print(describe(summaries[0]) if len(summaries) == 1 else markdown_table(summaries))


def cmd_train(args) -> int | None:
    from .config import help_keys, list_recipes, load_config
    from .rundir import RunDir

    if args.help_keys:  # the values this command would train with, not the dataclasses' defaults
        print(help_keys(load_config(args.recipe or DEFAULT_RECIPE, args.overrides)))
        return
    if args.list_recipes:
        print("\n".join(list_recipes()))
        return
    if args.resume:
        if args.out:
            raise UserError("--resume continues a run in its own directory; drop --out (or copy the run directory "
                            "there and resume the copy)")
        run = RunDir(args.resume)
        cfg = run.config(args.overrides)
        if args.recipe:
            raise UserError("--resume continues a run with its own config.toml; drop --recipe")
        return _train_in_processes(args, cfg, run.path, resume=True)
    recipe = args.recipe or DEFAULT_RECIPE
    cfg = load_config(recipe, args.overrides)
    run_dir = Path(args.out) if args.out else Path("runs") / f"{Path(recipe).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    return _train_in_processes(args, cfg, run_dir, resume=False)


def _train_in_processes(args, cfg, run_dir: Path, resume: bool) -> int | None:
    """Train in this process, or run this same command as run.procs processes of one run (auto: the paper's two
    workers on a multi-core CPU; runtime.training_processes), splitting this process's threads between them."""
    from . import distributed, runtime
    from .training.loop import batch_share, train

    device = runtime.pick_device(cfg.run.device)
    procs, why = runtime.training_processes(cfg.run.procs, device, cfg.optim.batch_size, resume)
    if procs == 1 or distributed.launched():
        train(cfg, run_dir, resume=resume)
        return None
    batch_share(cfg, procs)  # a batch that does not split: said once, here
    threads = max(1, torch.get_num_threads() // procs)
    print(f"{procs} processes x {threads} thread(s), each taking {cfg.optim.batch_size // procs} of each step's "
          f"{cfg.optim.batch_size} images ({why})")
    choice = [] if resume or cfg.run.procs else [f"run.procs={procs}"]  # a new run records the number chosen
    where = ["--resume", str(run_dir)] if resume else ["--recipe", args.recipe or DEFAULT_RECIPE, "--out", str(run_dir)]
    command = ["--debug"] * getattr(args, "debug", False) + ["train", *args.overrides, *choice, *where]
    return distributed.launch_here(procs, threads, command)


def cmd_experiment(args) -> None:
    from .config import split_override
    from .paper import experiments

    out = Path(args.out or f"runs/{args.experiment}")
    family = getattr(args, "family", "cifar10")  # table6 is CIFAR-10's
    default_split = 5000 if family == "cifar10" and not args.test else 0
    val_split = args.val_split if args.val_split is not None else default_split
    overrides = {"data.val_split": val_split, **dict(map(split_override, args.overrides))}
    common = {"data": args.data, "schedule": args.schedule, "seeds": args.seeds, "overrides": overrides}
    if args.experiment == "degradation":
        depths = args.depths or experiments.DEFAULT_DEPTHS[family]
        runs = experiments.degradation_runs(family, depths, **common)
        what = "plain vs residual"
    elif args.experiment == "table6":
        runs = experiments.table6_runs(args.depths or experiments.TABLE6_DEPTHS, **common)
        what = "Table 6: CIFAR-10 ResNets"
    else:
        runs = experiments.shortcut_runs(family, args.network, args.options.split(","), **common)
        what = f"{args.network}: shortcut options {args.options}"
    held_out = runs[0].cfg.data.val_split
    if args.test and held_out:
        raise UserError("--test trains on every training image and scores the test split; drop the held-out split "
                        f"({held_out} images)")
    title = f"{what} on {args.data} ({args.schedule} schedule, {f'{held_out} held out' if held_out else 'test set'})"
    experiments.execute(runs, out)
    table, text = experiments.tabulate(args.experiment, runs, out)
    experiments.write_outputs(args.experiment, runs, out, title, table, text)
    print(text, end="")
    print(f"wrote {shown(out / args.experiment)}.md, .json and .png")


def cmd_responses(args) -> None:
    from .paper import outputs
    from .paper.responses import markdown, run_responses
    from .plots import plot_responses

    results = [run_responses(run_dir, args.images) for run_dir in args.runs]
    out = Path(args.out)
    outputs.write(out, "responses", markdown(results), results, lambda path: plot_responses(results, path))
    print(markdown(results), end="")
    print(f"wrote {shown(out / 'responses')}.md, .json and .png")


def cmd_report(args) -> None:
    from . import files
    from .paper.report import markdown, run_row
    from .rundir import find_runs

    text = markdown([run_row(run) for run in find_runs(args.runs)])
    if args.out:
        files.write_text(args.out, text)
        print(f"wrote {shown(args.out)}")
    else:
        print(text, end="")


def cmd_eval(args) -> None:
    from . import distributed, runtime
    from .serving.evaluate import evaluate_checkpoint

    if args.split_seed is not None and not args.val_split:
        raise UserError("--split-seed says which images --val-split N holds out; give --val-split too")
    runtime.keep_freed_memory()  # batch after batch frees and takes the same blocks, as a training step does
    results = evaluate_checkpoint(args.checkpoint, args.data, args.protocol.split(","),
                                  device=runtime.pick_device(args.device, "--device "), precision=args.precision,
                                  val_split=args.val_split, split_seed=args.split_seed or 0, scales=args.scales)
    if distributed.rank() != 0:  # under torchrun every process has the results; one prints them
        return
    for result in results:
        if args.json:
            print(json.dumps(result))
        else:
            print(f"{result['images']} images, {result['protocol']}: top-1 error {result['top1_error']:.2%}, "
                  f"top-5 error {result['top5_error']:.2%}, loss {result['loss']:.4f}")


def cmd_predict(args) -> int:
    from . import runtime
    from .data.decode import MAX_PIXELS
    from .serving.predict import image_files, predict
    from .serving.weights import load_model

    runtime.keep_freed_memory()  # as in eval
    named = [args.checkpoint] if args.checkpoint else []
    source, inputs = (args.model, [*named, *args.inputs]) if args.model else (args.checkpoint, args.inputs)
    if not source:
        raise UserError("name the network (a checkpoint, run directory, .safetensors export, or --model "
                        "NETWORK:DATASET), then the images to classify")
    if not inputs:
        raise UserError(f"name the images (files or folders) to classify after {source}")
    model, info = load_model(source, runtime.pick_device(args.device, "--device "))
    files = image_files(inputs)
    failed = 0
    for result in predict(model, info, files, args.top_k, args.batch_size, args.max_pixels or MAX_PIXELS, args.mode):
        if "error" in result:
            failed += 1
            print(f"resnets predict: error: {shown(result['path'])}: {shown(result['error'])}", file=sys.stderr)
        if args.json:  # exact names, escaped as JSON escapes them
            print(json.dumps(result), flush=True)
        elif "top" in result:
            print(f"{shown(result['path'])}: "
                  + ", ".join(f"{shown(t['class'])} {t['probability']:.3f}" for t in result["top"]))
    if failed:
        return 1  # some files were not classified


def cmd_embed(args) -> int:
    from . import runtime
    from .data.decode import MAX_PIXELS
    from .serving.embed import embed, save_npy
    from .serving.predict import image_files
    from .serving.weights import load_model

    if args.out and Path(args.out).suffix != ".npy":  # what it writes; another name would hide that
        raise UserError(f"--out {args.out}: embed writes a NumPy .npy file; give it a .npy name (or --json for "
                        "text)")
    runtime.keep_freed_memory()  # as in eval
    model, info = load_model(args.checkpoint, runtime.pick_device(args.device, "--device "))
    results, failed = [], 0
    for result in embed(model, info, image_files(args.inputs), args.batch_size, args.max_pixels or MAX_PIXELS):
        if "error" in result:
            failed += 1
            print(f"resnets embed: error: {shown(result['path'])}: {shown(result['error'])}", file=sys.stderr)
        if args.json:  # one object per image and line, as predict --json
            print(json.dumps({**result, **({"features": result["features"].tolist()} if "error" not in result
                                           else {})}), flush=True)
        else:
            results.append(result)
    if args.out:
        rows = save_npy(results, model.num_features, args.out)
        print(f"wrote {shown(args.out)}: {rows.shape[0]} images x {rows.shape[1]} features (float32), one row per "
              f"file in the order listed" + (f"; {failed} unreadable: rows of NaN" if failed else ""))
    if failed:
        return 1  # some files were not embedded


def cmd_export(args) -> None:
    from .serving.export import FORMATS, export

    result = export(args.checkpoint, args.out, args.format)
    checker = FORMATS[result["format"]].checker
    print(f"wrote {shown(result['path'])} ({result['format']}, {result['bytes'] / 1e6:.1f} MB); {checker}"
          f" vs PyTorch fp32 on 3 random images: max abs diff on logits {result['max_abs_diff']:.2e}"
          f" (limit {result['limit']:.1e})")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="resnets", description=__doc__)
    parser.add_argument("--version", action="version", version=f"resnets {__version__} (torch {torch.__version__})")
    jobs = parser.add_subparsers(dest="job", required=True, metavar="JOB")
    for add in (_add_summary, _add_train, _add_experiment, _add_report, _add_eval, _add_predict, _add_embed, _add_export):
        add(jobs)  # each job's arguments, its help and its cmd_<job>
    return parser


def _add_summary(jobs) -> None:
    p = jobs.add_parser("summary", help="parameters, multiply-adds and stage shapes of presets")
    p.add_argument("names", nargs="*", metavar="NAME", help="preset names (default: all)")
    p.add_argument("--input-size", type=at_least(1), default=None, help="input side in pixels (default 224 / 32)")
    p.add_argument("--json", action="store_true", help="print JSON (one object for one name)")
    p.set_defaults(func=cmd_summary)


def _add_train(jobs) -> None:
    p = jobs.add_parser("train", help="train a network with a recipe (default: ResNet-20 on the embedded digits)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override recipe keys, e.g. optim.lr=0.05")
    p.add_argument("--recipe", help=f"packaged recipe name or a .toml path (default {DEFAULT_RECIPE})")
    p.add_argument("--out", help="run directory (default runs/<recipe>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its newest checkpoint")
    p.add_argument("--help-keys", action="store_true",
                   help="list every config key with the value the recipe (and overrides) give it")
    p.add_argument("--list-recipes", action="store_true", help="list the packaged recipes")
    p.set_defaults(func=cmd_train)


def _add_experiment(jobs) -> None:
    """`resnets experiment degradation | shortcuts | table6 | responses`."""
    p = jobs.add_parser("experiment", help="the paper's experiments: degradation (Figure 6), shortcuts (Table 3), "
                                           "table6 (Table 6), responses (Figure 7)")
    kinds = p.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    for name, text in (("degradation", "plain and residual nets of several depths, same recipe and seed"),
                       ("shortcuts", "shortcut options A, B and C on the same network and recipe"),
                       ("table6", "the CIFAR-10 ResNets of Table 6 with the paper's recipe, error beside the paper's")):
        e = kinds.add_parser(name, help=text, description=text)
        e.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides for every run")
        e.add_argument("--data", required=True, help="data.path of every run (CIFAR-10 archive or image folder)")
        if name != "table6":
            e.add_argument("--family", default="cifar10", choices=("cifar10", "imagenet"), help="recipe family")
        e.add_argument("--schedule", default="paper", help="paper (the recipe's own) or cpu (2,000 iterations)")
        e.add_argument("--seeds", default="0", type=integers(0), help="comma-separated seeds; > 1 gives mean ± std")
        e.add_argument("--val-split", type=int, help="held-out training images (default 5000 for cifar10)")
        e.add_argument("--test", action="store_true",
                       help="the paper's protocol: train on every training image, score the data's test split "
                            "(--data a CIFAR archive or a folder with train/ and test/)")
        e.add_argument("--out", help=f"experiment directory (default runs/{name})")
        if name == "degradation":
            e.add_argument("--depths", type=integers(1), help="comma-separated depths (default 20,32,44,56; imagenet 18,34)")
        elif name == "table6":
            e.add_argument("--depths", type=integers(1), help="comma-separated depths (default 20,32,44,56,110; "
                                                               "1202 on request)")
        else:
            e.add_argument("--network", default="resnet32", help="the network (default resnet32)")
            e.add_argument("--options", default="A,B,C", help="shortcut options (default A,B,C)")
        e.set_defaults(func=cmd_experiment)
    text = "std of each 3x3 layer's response (after BN, before ReLU and addition) of trained runs (Figure 7)"
    e = kinds.add_parser("responses", help=text, description=text)
    e.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (their newest checkpoints)")
    e.add_argument("--images", type=int, default=5000, help="held-out images to measure on (default 5000)")
    e.add_argument("--out", default="runs/responses", help="where responses.md/.json/.png go")
    e.set_defaults(func=cmd_responses)


def _add_report(jobs) -> None:
    p = jobs.add_parser("report", help="measured errors of runs beside the paper's (markdown)")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories, or folders of runs")
    p.add_argument("--out", help="write the markdown here instead of printing it")
    p.set_defaults(func=cmd_report)


def _add_eval(jobs) -> None:
    from .config import CHOICES

    p = jobs.add_parser("eval", help="top-1 / top-5 error of a checkpoint on a dataset")
    p.add_argument("checkpoint", help=SOURCE)
    p.add_argument("--data", required=True, help="'digits', a CIFAR archive/folder (test split) or an image folder")
    p.add_argument("--val-split", type=at_least(1), default=0, metavar="N",
                   help="measure the N training images that a run with data.val_split=N held out (the same ones)")
    p.add_argument("--split-seed", type=at_least(0), help="with --val-split: data.split_seed of the run (default 0)")
    p.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda or cuda:N")
    p.add_argument("--precision", default="fp32", choices=CHOICES["run.precision"])
    p.add_argument("--protocol", default="center", type=protocols,
                   help="the paper's test protocols, one or several comma-separated: center (resize, centre crop; the "
                        "default), flip (the centre crop and its mirror image, scores averaged; not the paper's), "
                        "10crop (4 corners + centre and their mirror images, scores averaged), multiscale (the whole "
                        "image at each of --scales, scores averaged)")
    p.add_argument("--scales", type=integers(1),
                   help="multiscale: shorter sides in pixels (default: the paper's 224,256,384,480,640)")
    p.add_argument("--json", action="store_true", help="print one JSON object per protocol")
    p.set_defaults(func=cmd_eval)


def _add_predict(jobs) -> None:
    from .serving.inference import uncalibrated_modes  # the choices come from the table of modes

    p = jobs.add_parser("predict", help="classify image files with a checkpoint or safetensors export")
    p.add_argument("checkpoint", nargs="?", help=f"{SOURCE}; with --model, the first image")
    add_images(p, nargs="*")
    p.add_argument("--model", metavar="NETWORK:DATASET",
                   help="the packaged weights to use, e.g. resnet20:cifar10 (docs/PRETRAINED.md); every positional "
                        "argument is then an image or folder")
    p.add_argument("--top-k", type=int, default=5, help="classes shown per image (default 5)")
    p.add_argument("--json", action="store_true", help="one JSON object per image and line (JSON Lines)")
    p.add_argument("--mode", default="auto", choices=("auto", *uncalibrated_modes()),
                   help="how the network runs (docs/INFERENCE.md): auto (the default) is bf16 where the hardware does "
                        "bf16, else BN-folded fp32; compiled (bf16 compiled) is the fastest for many images but "
                        "compiles first, tens of seconds")
    p.set_defaults(func=cmd_predict)


def _add_embed(jobs) -> None:
    p = jobs.add_parser("embed", help="pooled features of image files (the classifier's input), for other tools")
    p.add_argument("checkpoint", help=SOURCE)
    add_images(p, nargs="+")
    to = p.add_mutually_exclusive_group(required=True)
    to.add_argument("--out", metavar="FILE.npy", help="write a (files, features) float32 .npy: row i is the i-th file "
                                                     "(folders in sorted order), NaN if it could not be read")
    to.add_argument("--json", action="store_true", help="one JSON object per image and line: path, features")
    p.set_defaults(func=cmd_embed)


def _add_export(jobs) -> None:
    from .serving.export import FORMATS, RETIRED  # the choices come from the table of formats

    p = jobs.add_parser("export", help="write a checkpoint as ONNX, a torch.export program or safetensors")
    p.add_argument("checkpoint", help=SOURCE)
    p.add_argument("--format", choices=(*FORMATS, *RETIRED),
                   help=f"default: from --out's extension ({', '.join(f.extension for f in FORMATS.values())}); "
                        f"{', '.join(RETIRED)}: refused, with what to use instead")
    p.add_argument("--out", required=True, help="the file to write")
    p.set_defaults(func=cmd_export)


def main(argv: list[str] | None = None) -> int:
    from . import distributed

    args = parse(build_parser(), argv)
    debug = getattr(args, "debug", False)
    try:
        with plain(), checked_stdout():
            status = args.func(args) or 0
    except ReaderGone:  # `resnets predict ... | head`: the reader has what it wanted; quiet, as cat is
        return 128 + signal.SIGPIPE  # what a shell reports for cat there
    except UserError as e:
        if debug:
            traceback.print_exc()
        if distributed.lead():  # every process of a run meets the same mistake; one says so
            print(f"resnets {args.job}: error: {shown(e)}", file=sys.stderr)  # it may quote names read from files
        else:
            distributed.wait_for_lead()  # stopped there when rank 0 has said it
            print(f"resnets {args.job}: process {os.environ['RANK']}: error: {shown(e)}", file=sys.stderr)
        return e.exit_status  # 2: the command's mistake, 1: the machine's (errors.EnvironmentFailure)
    except KeyboardInterrupt:
        if distributed.lead():
            print(f"resnets {args.job}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # the other processes of a run, whose lead says why it stopped
        if distributed.lead() or debug:
            raise
        print(f"resnets {args.job}: process {os.environ['RANK']} stopped with the run: {first_line(e)}",
              file=sys.stderr)
        return 1
    finally:
        distributed.shutdown()  # leaves torchrun's process group, if this process joined one
    return status
