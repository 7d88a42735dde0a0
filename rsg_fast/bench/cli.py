"""``rsg-fast bench`` (also ``python -m rsg_fast.bench``): the command line.

Parses the flags (``rsg_fast.cli_args``: no prefix matching, errors name the flag, exit status 2),
resolves them into a ``runner.Plan``, runs it, prints the table and writes the files. Exit status:
0, or 1 when a row failed (its ``error: ...`` status says why), or 2 for a bad command line.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rsg_fast import cli_args
from rsg_fast.bench import cases as bc
from rsg_fast.bench import op_cases
from rsg_fast.bench.report import SCHEMA, format_report, write_outputs
from rsg_fast.bench.runner import Plan, run

PROG = "rsg-fast bench"
DEFAULT_OUT = "./rsg-bench/"
GROUPS = ("module", "step", "op")
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")


def _maps(text: str) -> tuple[int, int, int]:
    parts = text.lower().replace(",", "x").split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"--maps must be CxHxW with three positive integers (e.g. 256x14x14), "
                                         f"got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = cli_args.Parser(prog=PROG, description=(
        "Time one forward+backward of RSG (PyTorch and Triton paths, and torch.compile) against "
        "ReferenceRSG in both phases, a CIFAR ResNet-32 training step without RSG, with ReferenceRSG and "
        "with RSG, and (--groups op) each fused op on its own. Prints a table; writes JSON, CSV and a PNG "
        "chart to --out."))
    what = p.add_argument_group("what to time")
    what.add_argument("--shapes", type=cli_args.name_list("--shapes", bc.PUBLIC_SHAPES, hidden=("tiny",)),
                      default=["cifar10"], metavar="NAMES",
                      help="settings, comma-separated: " + ", ".join(bc.PUBLIC_SHAPES) +
                      " (default cifar10: N=128, maps 32x16x16, K=15, D=256, 10 classes, rho=100, heads 0,1)")
    what.add_argument("--device", type=cli_args.device_name("--device"), default="auto",
                      help="auto (default: CUDA when present, else CPU), cpu, cuda or cuda:N")
    what.add_argument("--groups", type=cli_args.name_list("--groups", GROUPS), default=None, metavar="NAMES",
                      help="module (RSG forward+backward), step (ResNet-32 training step), op (each fused op "
                           "alone); comma-separated (default module,step)")
    what.add_argument("--variants", type=cli_args.name_list("--variants", bc.ALL_VARIANTS), default=None,
                      metavar="NAMES", help="module and step variants, comma-separated subset of "
                      + ", ".join(bc.ALL_VARIANTS) + " (default: all; those that cannot run here are listed as skipped)")
    what.add_argument("--phases", type=cli_args.name_list("--phases", bc.PHASES), default=list(bc.PHASES),
                      metavar="NAMES", help="contrastive (epoch <= epoch_thresh), generation (after it), or both "
                                            "(default)")
    what.add_argument("--ops", type=cli_args.name_list("--ops", op_cases.OPS), default=None, metavar="NAMES",
                      help="fused ops for --groups op: " + ", ".join(op_cases.OPS) + " (default all)")
    what.add_argument("--op-impls", type=cli_args.name_list("--op-impls", op_cases.OP_IMPLS), default=None,
                      metavar="NAMES", help="implementations for --groups op: reference (rsg_fast.ops.naive), "
                                            "torch, triton (default all)")
    what.add_argument("--dtypes", type=cli_args.name_list("--dtypes", tuple(op_cases.DTYPES)), default=None,
                      metavar="NAMES", help="tensor dtypes for --groups op: fp32, bf16, fp16 (default fp32)")
    what.add_argument("--amp", type=cli_args.name_list("--amp", tuple(bc.AMP_DTYPES)), default=None, metavar="NAMES",
                      help="module and step rows: off (fp32), bf16, fp16 (forward and losses under autocast, "
                           "as rsg-fast train --amp; fp16 steps with a GradScaler), each a set of rows of its "
                           "own, compared only with rows of the same dtype; comma-separated (default off)")
    what.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=True,
                      help="on CUDA, also time each op replayed from a CUDA graph (default on)")
    what.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                      help="also time the torch.compile variants (default: on for CUDA, off for CPU)")
    what.add_argument("--compile-backend", choices=COMPILE_BACKENDS, default="inductor",
                      help="torch.compile backend (default inductor; eager or aot_eager only check that "
                           "compilation works)")
    size = p.add_argument_group("sizes (override the setting's)")
    size.add_argument("--batch", type=cli_args.positive_int("--batch"), default=None, help="N")
    size.add_argument("--maps", type=_maps, default=None, metavar="CxHxW", help="the feature-map shape")
    size.add_argument("--centers", type=cli_args.positive_int("--centers"), default=None, help="K (n_center)")
    size.add_argument("--dim", type=cli_args.positive_int("--dim"), default=None, help="D (contrastive_module_dim)")
    size.add_argument("--classes", type=cli_args.positive_int("--classes"), default=None,
                      help="the class count (head classes become the first 20 %%)")
    how = p.add_argument_group("how to time")
    how.add_argument("--budget", type=cli_args.positive_float("--budget"), default=None, metavar="SECONDS",
                     help="timing budget per setting after warm-up (default 40 on CPU, 20 on CUDA); every case "
                          "still gets the minimum number of rounds")
    how.add_argument("--min-rounds", type=cli_args.positive_int("--min-rounds"), default=None,
                     help="fewest timed rounds per case on the CPU, calls on CUDA (default 5 on CPU, 20 on CUDA)")
    how.add_argument("--warmup", type=cli_args.positive_int("--warmup"), default=None,
                     help="warm-up calls per case (default 2; compiled variants get 2 more)")
    how.add_argument("--threads", type=cli_args.positive_int("--threads"), default=None,
                     help="torch.set_num_threads (default: torch's choice, reported)")
    how.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                     help="measure the peak memory of one call of each module and step variant (default on)")
    how.add_argument("--launches", action=argparse.BooleanOptionalAction, default=True,
                     help="CUDA: count the device commands (kernels, copies, fills) and host synchronisations "
                          "of one call of each module and step variant (default on)")
    how.add_argument("--quick", action="store_true", help="smoke run: 1 warm-up, 2 rounds (numbers are rough)")
    how.add_argument("--seed", type=cli_args.nonneg_int("--seed"), default=0,
                     help="seed of inputs and parameters (default 0)")
    out = p.add_argument_group("output")
    out.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    out.add_argument("--tag", default=None, help="output file stem (default bench-<shapes>-<device>)")
    out.add_argument("--baseline", default=None, metavar="FILE",
                     help="an earlier result JSON of this bench: report whether any CPU row got slower")
    out.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


def _usage(message: str) -> cli_args.UsageError:
    return cli_args.UsageError(PROG, message)


def _check_groups(args) -> list[str]:
    groups = args.groups or ["module", "step"]
    if args.variants and not any(bc.GROUP_OF[v] in groups for v in args.variants):
        raise _usage(f"--variants {','.join(args.variants)} names module/step variants, but --groups "
                     f"{','.join(groups)} includes neither group")
    for flag, value in (("--ops", args.ops), ("--op-impls", args.op_impls), ("--dtypes", args.dtypes)):
        if value is not None and "op" not in groups:
            raise _usage(f"{flag} applies to the fused ops: add --groups op (now {','.join(groups)})")
    if args.amp is not None and not {"module", "step"} & set(groups):
        raise _usage(f"--amp applies to the module and step rows (--dtypes to the fused ops): add --groups "
                     f"module or step (now {','.join(groups)})")
    return groups


def _out_folder(text: str) -> Path:
    out = Path(text)
    if out.exists() and not out.is_dir():
        raise _usage(f"--out {text!r} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _usage(f"--out {text!r} cannot be created: {exc.strerror or exc}") from None
    return out


def _baseline(path: str | None) -> dict | None:
    if path is None:
        return None
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise _usage(f"--baseline {path!r} cannot be read as JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise _usage(f"--baseline {path!r} is not a result of this bench (schema {SCHEMA})")
    return doc


def make_plan(args, argv: list[str]) -> Plan:
    """The run's plan from parsed flags; raises ``UsageError`` for combinations argparse cannot check."""
    import torch

    device = cli_args.resolve_device(args.device)
    groups = _check_groups(args)
    settings = [bc.SETTINGS[name].override(batch=args.batch, maps=args.maps, centers=args.centers, dim=args.dim,
                                           num_classes=args.classes) for name in args.shapes]
    for s in settings:
        if s.batch < 2:
            raise _usage(f"--batch must be at least 2 (RSG pairs samples), got {s.batch}")
        if s.num_classes < 2:
            raise _usage(f"--classes must be at least 2 (heads and tails), got {s.num_classes}")
    cuda, quick = device.type == "cuda", args.quick
    tag = args.tag or f"bench-{'+'.join(s.name for s in settings)}-{device.type}"
    if not tag or any(c in tag for c in "/\\") or tag.startswith("."):
        raise _usage(f"--tag must be a plain file stem, got {tag!r}")
    plan = Plan(
        device=device, settings=settings, groups=groups, variants=args.variants or list(bc.ALL_VARIANTS),
        variants_in_order=bool(args.variants),
        phases=args.phases, amp_dtypes=[bc.AMP_DTYPES[name] for name in args.amp or ["off"]],
        ops=args.ops or list(op_cases.OPS), op_impls=args.op_impls or list(op_cases.OP_IMPLS),
        dtypes=args.dtypes or ["fp32"], cuda_graphs=args.cuda_graphs,
        compile=cuda if args.compile is None else args.compile, compile_backend=args.compile_backend,
        seed=args.seed, memory=args.memory, launches=args.launches, progress=args.progress, quick=quick,
        warmup=args.warmup or (1 if quick else 2),
        budget_s=args.budget or (1.0 if quick else (20.0 if cuda else 40.0)),
        min_rounds=args.min_rounds or (2 if quick else (20 if cuda else 5)),
        max_rounds=3 if quick else (200 if cuda else 40),
        baseline=_baseline(args.baseline), command=" ".join([PROG, *argv]),
        out=_out_folder(args.out), tag=tag)
    if args.threads:
        torch.set_num_threads(args.threads)
    return plan


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = cli_args.parse_args(build_parser(), argv)
        plan = make_plan(args, argv)
    except cli_args.UsageError as exc:
        return cli_args.usage_error_exit(exc)
    except ValueError as exc:   # resolve_device: the device went away between parsing and now
        return cli_args.usage_error_exit(_usage(str(exc)))
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    result = run(plan, on_partial=lambda partial: write_outputs(partial, plan.out, plan.tag, chart=False))
    print(format_report(result))
    for kind, path in write_outputs(result, plan.out, plan.tag).items():
        print(f"{kind}: {path}")
    if result.get("chart_note"):
        print(result["chart_note"])
    return 1 if any(r["status"].startswith("error") for r in result["rows"]) else 0
