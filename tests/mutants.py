"""The fast paths' mutation check: run the tests of each fast path with that path broken at run time (the sources
untouched) and fail if a mutant survives, i.e. if every test still passes without the path.

    make mutants                            # every mutant, then the unmutated files as the control
    python -m tests.mutants compile modes   # some of them

Each mutant breaks one path the way a mistake would, silently: the runs still say "bf16 autocast" or "compiled".
It is applied by this module loaded as a pytest plugin (-p tests.mutants), before any test imports resnets, in the
tests' own process (not in the processes they start). Prints a table (mutant, tests run, failures, verdict,
seconds) and the tests that killed each mutant.
"""

import argparse
import contextlib
import os
import shlex
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _no_autocast() -> None:
    torch.autocast = lambda *args, **kwargs: contextlib.nullcontext()


def _no_compile() -> None:
    torch.compile = lambda model=None, **kwargs: model if model is not None else (lambda fn: fn)


def _modes_folded() -> None:
    from resnets.serving.inference import MODES

    MODES["bf16"] = MODES["compiled"] = MODES["folded"]


def _no_channels_last() -> None:
    torch.channels_last = torch.contiguous_format  # every .to / .contiguous(memory_format=...) keeps NCHW


@dataclass(frozen=True)
class Mutant:
    apply: Callable[[], None]
    files: tuple[str, ...]  # the test files of the path it breaks, under tests/
    what: str


MUTANTS = {
    "autocast": Mutant(_no_autocast, ("test_train.py",),
                       "torch.autocast a no-op: run.precision=bf16 trains and evaluates in fp32"),
    "compile": Mutant(_no_compile, ("test_train.py", "test_inference.py", "test_predict.py"),
                      "torch.compile the identity: run.compile and the compiled serving mode compile nothing"),
    "modes": Mutant(_modes_folded, ("test_inference.py", "test_predict.py", "test_tables.py"),
                    "the bf16 and compiled serving modes are plain folded fp32"),
    "channels_last": Mutant(_no_channels_last, ("test_train.py", "test_inference.py", "test_predict.py"),
                            "torch.channels_last is contiguous_format: nothing is converted to channels_last"),
}


def pytest_configure(config) -> None:
    """The plugin: apply the mutant RESNETS_MUTANT names, if any."""
    name = os.environ.get("RESNETS_MUTANT")
    if name:
        MUTANTS[name].apply()


@dataclass
class Outcome:
    tests: int  # that ran: not skipped, nor expected to fail
    failed: list[str]  # the tests that failed or ended in an error
    seconds: float


def run(mutant: str | None, files, pytest_args: list[str]) -> Outcome:
    """The test files under `mutant` (None: unmutated), read from pytest's JUnit report."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.xml"
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.mutants", "-p", "no:cacheprovider", "-q",
                               f"--junitxml={report}", *(f"tests/{f}" for f in files), *pytest_args],
                              cwd=ROOT, env={**os.environ, "RESNETS_MUTANT": mutant or ""},
                              stdout=subprocess.DEVNULL, check=False)
        seconds = time.perf_counter() - start
        if not report.is_file():
            raise SystemExit(f"pytest ran no tests under mutant {mutant} (exit status {done.returncode})")
        ran = [case for case in ET.parse(report).getroot().iter("testcase") if case.find("skipped") is None]
    failed = [f"{case.get('classname')}.{case.get('name')}" for case in ran
              if case.find("failure") is not None or case.find("error") is not None]
    return Outcome(len(ran), failed, seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mutants", nargs="*", metavar="MUTANT", help=f"any of {', '.join(MUTANTS)} (default: all)")
    parser.add_argument("--pytest", default="", help='more arguments for pytest, e.g. "-k bf16"')
    args = parser.parse_args(argv)
    names = args.mutants or list(MUTANTS)
    if unknown := [name for name in names if name not in MUTANTS]:
        parser.error(f"no mutant {unknown[0]!r}; choose from {', '.join(MUTANTS)}")
    outcomes = {name: run(name, MUTANTS[name].files, shlex.split(args.pytest)) for name in names}
    control = run(None, sorted({f for name in names for f in MUTANTS[name].files}), shlex.split(args.pytest))
    print("| mutant | tests run | failures | verdict | seconds |\n|---|---:|---:|---|---:|")
    for name, o in outcomes.items():
        print(f"| {name} | {o.tests} | {len(o.failed)} | {'killed' if o.failed else 'SURVIVED'} | {o.seconds:.0f} |")
    print(f"| none (control) | {control.tests} | {len(control.failed)} | {'FAILS' if control.failed else 'passes'} "
          f"| {control.seconds:.0f} |")
    for name, o in [*outcomes.items(), ("none (control)", control)]:
        print(f"\n{name}: {MUTANTS[name].what if name in MUTANTS else 'the sources as they are'}")
        print("\n".join(f"  failed: {test}" for test in o.failed) or "  no test failed")
    return 1 if control.failed or not all(o.failed for o in outcomes.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
