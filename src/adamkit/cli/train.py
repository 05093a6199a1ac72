"""``adamkit train``: train a linear model on the airfoil data and print its loss curve.

Loss lines go to stdout and are identical for identical arguments; the progress bar
and the timing go to stderr. ``--nproc N`` trains data-parallel in N local processes.
"""

import argparse
import datetime
import sys
import threading
from types import SimpleNamespace

import torch
import torch.distributed as dist
from tqdm import tqdm

from adamkit.cli.errors import CommandError
from adamkit.cli.options import check_names, positive_float, positive_int
from adamkit.datasets import load_airfoil
from adamkit.optimizers.registry import OPTIMIZER_NAMES, build_optimizer
from adamkit.training import train

# Long enough for every process to import torch and load the compiled kernels on a busy machine.
RENDEZVOUS_TIMEOUT = datetime.timedelta(seconds=120)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand to the ``adamkit`` parser."""
    parser = subparsers.add_parser(
        "train",
        help="train a linear model on the airfoil data",
        description="Train nn.Linear(5, 1) on the airfoil self-noise data (d2l.ai's "
        "protocol) and print the loss over the whole data set every 200 examples.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--optimizer", default="adam", metavar="NAME", help=f"one of: {', '.join(OPTIMIZER_NAMES)}"
    )
    parser.add_argument("--lr", type=positive_float, default=0.01, help="learning rate")
    parser.add_argument("--epochs", type=positive_int, default=2, help="passes over the data")
    parser.add_argument("--batch-size", type=positive_int, default=10, help="examples per step (per process)")
    parser.add_argument("--seed", type=int, default=0, help="seeds initial weights and shuffling")
    parser.add_argument(
        "--max-grad-norm", type=positive_float, default=None, metavar="X",
        help="clip the gradients to this global norm inside each step (the optimizer's max_grad_norm)",
    )
    parser.add_argument(
        "--nproc", type=positive_int, default=1, metavar="N",
        help="train data-parallel in N local processes (torch.distributed, gloo on 127.0.0.1): they "
        "split a seeded shuffle of the examples, each steps on its own batches with the gradients "
        "averaged over all, and the loss is printed every 200 examples of each process",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or timing on stderr")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    """Train as ``args`` asks (in ``args.nproc`` processes), printing a loss line every 200 examples and the final loss."""
    check_names("optimizer", [args.optimizer], OPTIMIZER_NAMES)
    if args.nproc == 1:
        _train(args, rank=0)
        return
    if not (dist.is_available() and dist.is_gloo_available()):
        raise CommandError("--nproc needs torch.distributed with the gloo backend, which this torch lacks; use --nproc 1")
    # The processes meet at a store this process serves, on a port the system picks.
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=RENDEZVOUS_TIMEOUT)
    if not args.quiet:
        print(f"training in {args.nproc} processes (gloo, 127.0.0.1:{store.port})", file=sys.stderr)
    processes = torch.multiprocessing.start_processes(
        _process, args=(args, store.port), nprocs=args.nproc, join=False, start_method="spawn"
    )
    try:
        while not processes.join():  # raises if a process failed, after ending the others
            pass
    finally:  # interrupted here (Ctrl-C to this process alone): the others must not train on
        for process in processes.processes:
            if process.is_alive():
                process.terminate()


def _process(rank: int, args: argparse.Namespace, port: int) -> None:
    """One of ``args.nproc`` data-parallel processes."""
    tqdm.set_lock(threading.RLock())  # tqdm's default lock is a semaphore, leaked when the parent ends this process
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=RENDEZVOUS_TIMEOUT)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=args.nproc, timeout=RENDEZVOUS_TIMEOUT)
    try:
        _train(args, rank)
    except KeyboardInterrupt:
        pass  # Ctrl-C reaches every process; the first one reports it
    finally:
        dist.destroy_process_group()


def _mean_over_processes(value: float) -> float:
    """``value`` averaged over the data-parallel processes."""
    total = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(total)
    return total.item() / dist.get_world_size()


def _average_gradients(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    """Before each step: every gradient becomes its mean over the processes, as
    DistributedDataParallel makes it (one all-reduce of them all)."""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    flat = torch.cat([grad.reshape(-1) for grad in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for grad, mean in zip(grads, flat.split([grad.numel() for grad in grads])):
        grad.copy_(mean.view_as(grad))


def _train(args: argparse.Namespace, rank: int) -> None:
    """Train; with several processes, on this process's share of the data, printing from the first."""
    processes = args.nproc
    data = load_airfoil()
    if processes > 1:
        # Every process takes as many examples, so that all step together; the shuffle
        # mixes the examples (neighbours in the file are alike) the same way in each.
        shuffled = torch.randperm(len(data[0]), generator=torch.Generator().manual_seed(args.seed))
        share = shuffled[rank : len(shuffled) // processes * processes : processes]
        data = tuple(tensor[share] for tensor in data)
    printing = rank == 0

    def make_optimizer(params):
        clipping = {} if args.max_grad_norm is None else {"max_grad_norm": args.max_grad_norm}
        try:
            optimizer = build_optimizer(args.optimizer, params, args.lr, **clipping)
        except ValueError as error:
            raise CommandError(str(error)) from None
        if processes > 1:
            optimizer.register_step_pre_hook(_average_gradients)
        return optimizer

    def print_loss(examples: int, epoch: float, loss: float) -> None:
        if processes > 1:
            loss = _mean_over_processes(loss)  # over the equal shares: the loss over all the data trained on
        if printing:
            # tqdm.write keeps the line from tearing through the progress bar.
            tqdm.write(f"epoch {epoch:.2f}  examples {examples * processes}  loss {loss:.9g}", file=sys.stdout)

    total_examples = args.epochs * len(data[0]) * processes
    with tqdm(
        total=total_examples, unit="example", file=sys.stderr, disable=args.quiet or not printing, leave=False
    ) as progress:
        result = train(
            make_optimizer,
            epochs=args.epochs,
            batch_size=args.batch_size,
            seed=args.seed,
            data=data,
            on_loss=print_loss,
            progress=SimpleNamespace(update=lambda examples: progress.update(examples * processes)),
        )
    final_loss = _mean_over_processes(result.final_loss) if processes > 1 else result.final_loss
    if printing:
        print(f"final loss: {final_loss:.9g}")
        if not args.quiet:
            print(f"{result.seconds_per_epoch:.3f} s/epoch", file=sys.stderr)
