"""``adamkit bench``: ms per optimizer step and effective GB/s, adamkit against torch.optim."""

import argparse
import json
from dataclasses import asdict

import numba
import torch

from adamkit import benchmark
from adamkit.cli.errors import CommandError
from adamkit.cli.options import check_names, name_list, positive_int

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="time one optimizer step: adamkit against torch's for-loop, foreach and fused",
        description=__doc__,
    )
    parser.add_argument("--sizes", nargs="+", default=list(benchmark.DEFAULT_SHAPES), metavar="NxM",
                        help="shapes to time, N tensors of M elements (default: %(default)s)")
    parser.add_argument("--optimizer", choices=list(benchmark.ALGORITHMS), default="adam",
                        help="the algorithm to time, adamkit's against torch.optim's or, where torch has none, "
                        "its reference package's (default: %(default)s; torch has fused kernels for adam and adamw only)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda / cuda:N for a GPU")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="threads for torch and adamkit (default: torch's)")
    parser.add_argument("--repeats", type=positive_int, default=10, help="timed steps per figure")
    parser.add_argument("--warmup", type=positive_int, default=3, help="untimed steps first")
    parser.add_argument("--implementations", nargs="+", default=list(benchmark.DEFAULT_IMPLEMENTATIONS),
                        choices=list(benchmark.IMPLEMENTATIONS), metavar="NAME",
                        help=f"any of: {', '.join(repr(name) for name in benchmark.IMPLEMENTATIONS)} "
                        f"({'; '.join(f'{name!r} needs {package}' for name, package in benchmark.PEER_IMPLEMENTATIONS.items())})")
    parser.add_argument("--state-dtype", type=name_list, default=[], metavar="A,B,...",
                        help=f"also time adamkit with its state stored in these formats, any of "
                        f"{','.join(benchmark.STATE_DTYPE_IMPLEMENTATIONS)} (fp32 is plain 'adamkit' on fp32 parameters)")
    parser.add_argument("--max-grad-norm", type=float, default=None, metavar="X",
                        help="clip gradients by their global norm: adamkit inside its step (max_grad_norm=X), "
                        "the others with torch.nn.utils.clip_grad_norm_ before each step")
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    try:
        shapes = [benchmark.parse_shape(text) for text in args.sizes]
    except ValueError as error:
        raise CommandError(str(error)) from None
    if args.device != "cpu" and not (args.device.startswith("cuda") and torch.cuda.is_available()):
        raise CommandError(f"device {args.device!r} is not available here; use cpu, or cuda on a machine with a GPU")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    check_names("state dtype", args.state_dtype, list(benchmark.STATE_DTYPE_IMPLEMENTATIONS))
    implementations = list(dict.fromkeys(
        args.implementations + [benchmark.STATE_DTYPE_IMPLEMENTATIONS[name] for name in args.state_dtype]
    ))
    unavailable = [name for name in implementations if not benchmark.available(name, args.optimizer)]
    if unavailable and args.implementations != list(benchmark.DEFAULT_IMPLEMENTATIONS):
        raise CommandError(f"{', '.join(map(repr, unavailable))} has no {args.optimizer}; leave it out")
    implementations = [name for name in implementations if name not in unavailable]
    missing = benchmark.missing_packages(implementations, args.optimizer)
    if missing:
        packaged = [n for n in implementations if n in benchmark.PEER_IMPLEMENTATIONS or n == "reference package"]
        raise CommandError(f"timing {', '.join(packaged)} needs {', '.join(missing)}, not installed here; "
                           f"pip install {' '.join(p.replace('_', '-') for p in missing)}, or leave it out")
    dtype = DTYPES[args.dtype]
    bandwidth = benchmark.stream_bandwidth(max(s.params for s in shapes), device=args.device)
    if args.max_grad_norm is not None and not args.max_grad_norm > 0:
        raise CommandError(f"--max-grad-norm {args.max_grad_norm} is not a positive number")
    results = benchmark.run(
        shapes, dtype, implementations, args.repeats, args.warmup, args.device, args.optimizer, args.max_grad_norm
    )
    machine = benchmark.machine(args.device)
    if args.json:
        print(json.dumps({"machine": machine, "device": args.device, "optimizer": args.optimizer,
                          "max_grad_norm": args.max_grad_norm, "stream_gb_per_s": bandwidth,
                          "results": [asdict(r) for r in results]}, indent=2))
        return
    clipping = "" if args.max_grad_norm is None else f", gradients clipped to norm {args.max_grad_norm:g}"
    print(f"machine: {machine}; optimizer: {args.optimizer}{clipping}")
    limit = "device-to-device copy" if args.device != "cpu" else "7 fp32 arrays per parameter"
    print(f"limit: stream bandwidth {bandwidth:.1f} GB/s ({limit})")
    width = max(len("implementation"), *(len(r.implementation) for r in results))
    print(f"{'shape':>14}  {'implementation':<{width}} {'ms/step':>9} {'GB/s':>7} {'adamkit speedup':>16}")
    for shape in shapes:
        rows = [r for r in results if r.shape == shape.label]
        ours = next((r.ms for r in rows if r.implementation == "adamkit"), None)
        for r in rows:
            speedup = f"{r.ms / ours:.2f}x" if ours and r.implementation != "adamkit" else ""
            print(f"{r.shape:>14}  {r.implementation:<{width}} {r.ms:9.2f} {r.gb_per_s:7.1f} {speedup:>16}")
            if r.checks_ms is not None:
                per_tensor = r.checks_ms * 1e3 / shape.tensors
                print(f"{'':>14}    of which checks {r.checks_ms:7.3f} ms ({per_tensor:.2f} us per tensor)")
