"""The argparse pieces the jobs of `resnets` share: a parser that takes --debug anywhere, the argument types, the
arguments several jobs take (the network to load, images to read, the device), and KEY=VALUE overrides anywhere on
the line."""

import argparse

SOURCE = ("a checkpoint, a run directory (its newest checkpoint), a .safetensors export or packaged weights "
          "(resnet20:cifar10)")


class Parser(argparse.ArgumentParser):
    """The parser of `resnets` and, through add_subparsers (which makes more of its own class), of every job: each
    takes --debug, so it goes before or after the job's name. One that does not see it leaves the attribute alone
    (SUPPRESS) for another to set."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                          help="show the full traceback of an error")


def add_images(p: argparse.ArgumentParser, nargs: str) -> None:
    """The image files or folders a job reads, and how: batch size and the decompression-bomb limit."""
    p.add_argument("inputs", nargs=nargs, metavar="IMAGE_OR_FOLDER", help="image files, or folders searched recursively")
    p.add_argument("--batch-size", type=at_least(1), default=64)
    p.add_argument("--max-pixels", type=at_least(1), metavar="N",
                   help="refuse images of more pixels as possible decompression bombs (default 50 million)")
    p.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda or cuda:N")


def protocols(text: str) -> str:
    from .serving.evaluate import TEST_PROTOCOLS

    unknown = [p for p in text.split(",") if p not in TEST_PROTOCOLS]
    if unknown:
        raise argparse.ArgumentTypeError(f"{', '.join(unknown)}: choose from {', '.join(TEST_PROTOCOLS)}")
    return text


def at_least(minimum: int):
    """An argparse type: an integer, at least `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer of at least {minimum}, got {text!r}")
        return value

    return parse


def integers(minimum: int):
    """An argparse type: comma-separated integers, none below `minimum`."""

    def parse(text: str) -> list[int]:
        try:
            values = [int(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
        if min(values) < minimum:
            raise argparse.ArgumentTypeError(f"expected integers of at least {minimum}, got {text!r}")
        return values

    return parse


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The command line, with KEY=VALUE overrides anywhere on it (`train --out runs/x lr=0.05`): argparse takes one
    stretch of positional arguments only, and its parse_intermixed_args does not take subcommands."""
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args
