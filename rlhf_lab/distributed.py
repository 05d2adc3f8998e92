"""More than one process: what the stages need to run under `accelerate launch` (Accelerate, through it DDP).

    accelerate launch --num_processes 2 -m rlhf_lab.cli run          # two GPUs, one process each
    accelerate launch --multi_gpu --num_processes 2 -m rlhf_lab.cli run --fast   # no GPU: two CPU processes, gloo

Data parallelism, as the Trainer and TRL do it, on the lab's shared trunk:
  - every process builds the same trunk, adapters and heads from the same seed (the frozen trunk and the
    reference, the trunk with adapters off, are the same everywhere: nothing of them is sent);
  - each takes its contiguous slice of every global batch (`shard`): demonstrations, pairs, PPO's episodes;
  - the trainable parameters (LoRA adapters, value head, reward head) sit in a module that Accelerate wraps
    in DDP (`prepare`), which all-reduces their gradients in the backward pass; every process then takes the
    same optimizer step;
  - what must be global is gathered (`gather`, `gather_object`): PPO's rollouts, so that advantages,
    whitening, minibatches and the KL controller see the whole batch, exactly as one process would;
  - one process (`is_main`) writes files, logs and draws progress bars; the others wait (`barrier`).

A loss that is a mean over a batch's tokens (or pairs) becomes each process's sum over its slice divided by
the global count; DDP averages gradients over the processes, so each process's loss is multiplied by the
number of processes (`world_size`) before its backward pass: the gradient is then the single-process
gradient of the same global batch (tests/test_distributed.py checks the losses, gradients and weights).

One process (no launcher): none of this runs, Accelerate is not even imported, and every stage computes
exactly what it did before.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings

import torch

from .utils import ConfigError, LabError

# the variables a launcher sets for each process: torchrun's (accelerate launch, torchrun) and MPI's
_WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_RANK_VARIABLES = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
_settings = {"cpu": None}  # set_cpu: run the processes on the CPU (gloo) even where CUDA is available
_accelerator = {"value": None}


def _from_environment(names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return default


def quiet_other_processes() -> None:
    """Under accelerate launch the processes other than the main one print nothing (progress, results, the
    lab's warnings), so the terminal shows one run, as with one process; their errors still reach stderr."""
    if not is_main():
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the rest of the process)
        warnings.simplefilter("ignore")


def launch_problem() -> str | None:
    """What went wrong with the launch, or None. `accelerate launch --cpu --num_processes N` starts one
    process whatever N is (Accelerate starts several CPU processes only through mpirun; huggingface/accelerate
    issues 2741 and 2492): that process then finds MASTER_ADDR, set for N > 1, but no WORLD_SIZE."""
    cpu = os.environ.get("ACCELERATE_USE_CPU", "").strip().lower() in ("1", "true", "yes")
    if world_size() > 1 or not cpu or not os.environ.get("MASTER_ADDR"):
        return None
    return ("accelerate launch --cpu started a single process, whatever --num_processes says (Accelerate starts "
            "several CPU processes only through mpirun), so this run has world_size 1. For N processes on the CPU: "
            "accelerate launch --multi_gpu --num_processes N -m rlhf_lab.cli ... on a machine without a GPU, or "
            "torchrun --nproc_per_node N -m rlhf_lab.cli ... (add --device cpu where there is a GPU); gloo either way.")


def set_cpu(cpu: bool) -> None:
    """Run this launch's processes on the CPU (backend gloo), as `--device cpu` asks; before any other call."""
    _settings["cpu"] = bool(cpu)


def _use_cpu() -> bool:
    if _settings["cpu"] is not None:
        return _settings["cpu"]
    forced = os.environ.get("ACCELERATE_USE_CPU", "").strip().lower() in ("1", "true", "yes")
    return forced or not torch.cuda.is_available()


def _state():
    """Accelerate's PartialState: it joins the process group (gloo on the CPU, NCCL on GPUs) on first use."""
    from accelerate import PartialState

    unsupported = [name for name in ("FSDP", "DEEPSPEED", "MEGATRON_LM")
                   if os.environ.get(f"ACCELERATE_USE_{name}", "").strip().lower() == "true"]
    if unsupported:
        raise LabError(f"this launch asks for {unsupported[0].replace('_', '-')}, which the lab does not use: only the "
                       "LoRA adapters and the heads train (a few MB), and every process holds the frozen trunk whole, "
                       "so there is nothing to shard. Launch with plain data parallelism (distributed_type: "
                       "MULTI_GPU in your accelerate config, or accelerate launch --multi_gpu).")
    return PartialState(cpu=_use_cpu())


def world_size() -> int:
    """How many processes train together: 1 unless launched by accelerate launch (or torchrun, mpirun).
    Read from the launcher's variables: asking does not join the process group (the first collective does)."""
    return max(1, _from_environment(_WORLD_SIZE_VARIABLES, 1))


def rank() -> int:
    """This process's index, 0 to world_size() - 1."""
    return _from_environment(_RANK_VARIABLES, 0) if world_size() > 1 else 0


def is_main() -> bool:
    """True in the one process that writes files, logs and progress bars (and in a run of one process)."""
    return rank() == 0


def device() -> torch.device:
    """This process's device: its own GPU (cuda:LOCAL_RANK) or the CPU."""
    state_device = _state().device
    return torch.device("cpu") if state_device.type == "cpu" else state_device  # "cpu", as pick_device gives it


def barrier() -> None:
    """Wait until every process is here (nothing to wait for in one process)."""
    if world_size() > 1:
        _state().wait_for_everyone()


@contextlib.contextmanager
def main_process_first():
    """The main process runs the block first (it writes what the block makes), then the others (they find it)."""
    if world_size() == 1:
        yield
        return
    with _state().main_process_first():
        yield


def check_divisible(n: int, field: str, config: str) -> None:
    """Refuse a global batch size that does not split evenly over the processes: each process takes
    n / world_size() of every batch, and every process must take the same number of passes, or they wait
    for each other for ever."""
    size = world_size()
    if n % size:
        raise ConfigError(f"{field}={n} does not split evenly over {size} processes: each process takes {field} / "
                          f"{size} of every batch. Choose a multiple of {size} (e.g. {n + size - n % size}), or "
                          "launch a number of processes that divides it (accelerate launch --num_processes).",
                          config, (field,))


# -----------------------------------------------------------------------------
# splitting and collecting


def shard(items):
    """This process's contiguous slice of a global batch (a list, or a tensor along dim 0); sizes differ by at
    most one, earlier processes first. One process: `items` itself. The slices in rank order make the batch."""
    size = world_size()
    if size == 1:
        return items
    n, index = len(items), rank()
    start, stop = index * n // size, (index + 1) * n // size
    return items[start:stop]


def share(n_local: float, n_global: float) -> float:
    """This process's weight for a mean over its slice: n_local / n_global, times world_size() because DDP
    averages the processes' gradients where one process's mean would sum them (1 in one process)."""
    return n_local / n_global * world_size() if world_size() > 1 else 1.0


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's tensor, concatenated along dim 0 in rank order (the shapes must be the same in every
    process: pad first). One process: the tensor itself."""
    if world_size() == 1:
        return tensor
    from accelerate.utils import gather as accelerate_gather

    if tensor.dtype == torch.bool:  # gloo has no all-gather of bools
        return accelerate_gather(tensor.to(torch.uint8)).bool()
    return accelerate_gather(tensor.contiguous())


def gather_object(items: list) -> list:
    """Every process's list (texts, dicts), concatenated in rank order. One process: the list itself."""
    if world_size() == 1:
        return items
    from accelerate.utils import gather_object as accelerate_gather_object

    return accelerate_gather_object(list(items))


def broadcast(tensor: torch.Tensor) -> torch.Tensor:
    """The main process's tensor, in every process (same shape and dtype everywhere)."""
    if world_size() == 1:
        return tensor
    from accelerate.utils import broadcast as accelerate_broadcast

    return accelerate_broadcast(tensor.contiguous(), from_process=0)


def max_across(*values: int) -> tuple[int, ...]:
    """The largest of each integer over the processes (e.g. the padded lengths every process must agree on)."""
    if world_size() == 1:
        return tuple(values)
    everyone = gather(torch.tensor([list(values)], dtype=torch.long, device=device()))  # (N, len(values))
    return tuple(int(v) for v in everyone.max(0).values.tolist())


def reduce_metrics(metrics: dict, op: str = "sum") -> dict:
    """Numbers of a log line summed ("sum") or maximised ("max") over the processes, as floats; for the
    token- or pair-weighted means each process computes over its share. One process: `metrics` as it is."""
    if world_size() == 1 or not metrics:
        return metrics
    values = torch.tensor([float(v) for v in metrics.values()], dtype=torch.float64, device=device())  # (K,)
    if op == "sum":
        from accelerate.utils import reduce as accelerate_reduce

        values = accelerate_reduce(values, reduction="sum")
    elif op == "max":
        values = gather(values[None]).max(0).values  # (N, K) -> (K,)
    else:
        raise LabError(f"op must be 'sum' or 'max', got {op!r}.")
    return dict(zip(metrics, values.tolist()))


def reduce_sum(value: float) -> float:
    """One number summed over the processes (one process: the number itself)."""
    return reduce_metrics({"value": value})["value"] if world_size() > 1 else value


# -----------------------------------------------------------------------------
# gradients: Accelerate's DDP around the trainable part


def accelerator():
    """The run's Accelerator (created once, on first use), with mixed_precision "no": the lab's own
    --precision (utils.autocast) decides the forward passes' dtype, in one process as in several. DDP keeps
    its defaults (GPT-2 has no buffers to send)."""
    if _accelerator["value"] is None:
        from accelerate import Accelerator

        _state()  # the checks above, before Accelerate reads the launch
        _accelerator["value"] = Accelerator(cpu=_use_cpu(), mixed_precision="no")
    return _accelerator["value"]


def prepare(module: torch.nn.Module) -> torch.nn.Module | None:
    """`module` wrapped by Accelerate for this launch (DDP: its trainable parameters' gradients all-reduced in
    the backward pass), or None in one process, where the stage calls its module as before.

    Every process must call it at the same point (DDP checks the shapes and sends the main process's weights
    to the others); the wrapper's forward is the module's forward.
    """
    if world_size() == 1:
        return None
    return accelerator().prepare_model(module)


def backward(loss: torch.Tensor, wrapped: torch.nn.Module | None) -> None:
    """loss.backward(), through Accelerate when the module is wrapped."""
    if wrapped is None:
        loss.backward()
    else:
        accelerator().backward(loss)


def no_sync(wrapped: torch.nn.Module | None, sync: bool):
    """A block whose backward pass only accumulates gradients here (sync=False: a micro-batch before the
    last one of a minibatch); the last one all-reduces the sum. Nothing to do in one process."""
    if wrapped is None or sync:
        return contextlib.nullcontext()
    return accelerator().no_sync(wrapped)


# -----------------------------------------------------------------------------
# randomness: the same everywhere, except where each process must draw its own


class RankGenerator:
    """The random numbers a process samples its share of the episodes with.

    Everything else (LoRA init, prompt order, minibatch order) draws from the global generator, which every
    process seeds alike and draws from alike, so they agree without sending anything. Sampling must differ
    between processes, or each would draw the same episodes: `with generator.sampling():` swaps in a stream of
    this process's own (seeded from the run's seed and the rank; the same seed and number of processes give
    the same run), and puts the global state back after. One process: the global generator, as before.
    """

    def __init__(self, seed: int):
        self.seed = seed
        self.state: dict | None = None  # this process's stream between blocks (and in checkpoints)

    @contextlib.contextmanager
    def sampling(self):
        if world_size() == 1:
            yield
            return
        cuda = [torch.cuda.current_device()] if torch.cuda.is_available() and device().type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):  # the global state is restored on leaving
            if self.state is None:
                seed = self.seed * 1_000_003 + 7_919 * (rank() + 1)  # a stream per process, none the global one
                torch.default_generator.manual_seed(seed)
                if cuda:
                    torch.cuda.manual_seed(seed)
            else:
                self.set_state(self.state)
            yield
            self.state = {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if cuda else None}

    @staticmethod
    def set_state(state: dict) -> None:
        torch.set_rng_state(state["cpu"])
        if state.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])
