"""`accelerate launch` with a pre-flight and without the launcher's traceback (what `make train` and `make smoke` run).

    python -m dpo_recipes.launch --config_file <accelerate.yaml> [launch args] recipes/<name>/train.py [--key value ...]

1. Pre-flight, in this one plain process: the config is parsed and validated and the data is read and checked (no
   tokenizer, no model). A bad key or a bad data row stops here with one line and exit code 2, before any process
   starts, instead of once per rank.
2. Launch: accelerate's own `launch` command, in this process. When a training process fails, accelerate raises
   (single process: CalledProcessError; several: torch elastic's ChildFailedError) and Python would print that
   launcher's traceback under the training process's own message. Here the launcher exits with the training
   process's exit code instead: 2 after a one-line user error, and for a crash one line pointing at the crash's own
   traceback above.

A bare `accelerate launch` cannot do this (accelerate raises, or with `--quiet` exits 1); docs/launching.md says
what it prints.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from accelerate.commands.launch import launch_command, launch_command_parser
from torch.distributed.elastic.multiprocessing import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from .config import parse_config
from .data import load_preference_data
from .errors import UserError, exit_on_user_error
from .smoke import deepspeed_json, read_yaml
from .threads import set_child_threads


def preflight(script_argv: list[str], launcher: dict) -> None:
    """The checks that need neither a tokenizer nor a model: config, the config with its launcher, then every data
    source, row by row."""
    script_args, training_args, model_args = parse_config(script_argv)
    check_quantisation_launcher(model_args, launcher)
    load_preference_data(script_args, seed=training_args.seed, num_proc=training_args.dataset_num_proc)


def check_quantisation_launcher(model_args, launcher: dict) -> None:
    """Quantised weights under DeepSpeed: ZeRO-3 shards 4-bit weights only when bitsandbytes stores them in the
    model's own dtype (bnb_4bit_quant_storage = dtype); 8-bit weights it cannot shard at all."""
    ds = deepspeed_json(launcher)
    stage = int((ds or {}).get("zero_optimization", {}).get("stage", 0) or 0)
    if stage != 3:
        return
    if model_args.load_in_8bit:
        raise UserError("config: load_in_8bit cannot run under DeepSpeed ZeRO-3 (it cannot shard int8 weights); use "
                        "load_in_4bit with bnb_4bit_quant_storage, or a launcher without ZeRO-3")
    storage, dtype = model_args.bnb_4bit_quant_storage, model_args.dtype
    if model_args.load_in_4bit and (storage is None or storage != dtype):
        raise UserError(f"config: QLoRA under DeepSpeed ZeRO-3 needs bnb_4bit_quant_storage equal to dtype ({dtype}) "
                        f"so ZeRO can shard the 4-bit weights; got {storage} (recipes/llama3-70b-qlora-zero3)")


def launch(argv: list[str]) -> int:
    """Run accelerate's launch; return the training processes' exit code (0 when they all succeed)."""
    args = launch_command_parser().parse_args(argv)
    # torch elastic logs each failed rank's exit code and pid; the training process already said what went wrong.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    # accelerate's notices (defaults it filled in, such as CPU threads per process; P2P off on RTX 4000 cards) ask
    # nothing of the user.
    logging.getLogger("accelerate.commands.launch").setLevel(logging.ERROR)
    launcher = read_yaml(args.config_file) if args.config_file else {}
    if args.cpu or launcher.get("use_cpu"):
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed would warn that it found no GPU
        # Each CPU process its share of the cores (accelerate passes OMP_NUM_THREADS on to every process).
        processes = args.num_processes or launcher.get("num_processes") or 1
        machines = args.num_machines or launcher.get("num_machines") or 1
        set_child_threads(max(1, int(processes) // int(machines)))
    try:
        launch_command(args)
    except subprocess.CalledProcessError as err:
        return err.returncode
    except ChildFailedError as err:
        _, failure = err.get_first_failure()
        return failure.exitcode if failure.exitcode > 0 else 1  # a negative code: killed by a signal
    except SignalException as err:  # torch elastic's agent got SIGTERM (Slurm's --signal, a pre-emption): it passed
        return 128 + err.sigval  # it on to the training processes and waited TORCH_ELASTIC_SHUTDOWN_TIMEOUT for them
    except SystemExit as err:  # `--quiet`: accelerate exits 1 itself
        return err.code if isinstance(err.code, int) else 1
    return 0


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    script = next((i for i, token in enumerate(argv) if token.endswith(".py")), None)
    if script is None:
        print("error: python -m dpo_recipes.launch needs a training script (recipes/<name>/train.py)",
              file=sys.stderr)
        sys.exit(2)
    args = launch_command_parser().parse_args(argv)
    preflight(argv[script + 1:], read_yaml(args.config_file) if args.config_file else {})
    code = launch(argv)
    if code not in (0, 2):  # 2: a user error, already printed as one line by the training process
        print(f"error: training exited with code {code} (the failing process's output is above)", file=sys.stderr,
              flush=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
