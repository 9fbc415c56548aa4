# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""
The `opo-trl` command.

    opo-trl train --config recipes/<name>.yaml [--key value ...]    # any OPOConfig/GRPOConfig/ModelConfig key
    opo-trl train --config recipes/<name>.yaml --algorithm grpo     # the same recipe with a baseline
    opo-trl quickstart [--seed 1]                                   # recipes/quickstart.yaml, offline, on a CPU
    opo-trl compare --config recipes/compare_cpu.yaml --seeds 0 1 2 # OPO vs GRPO, DAPO, GSPO (opo_trl.compare)

Command-line values override the YAML, as in `trl grpo`. Works under `accelerate launch -m opo_trl.cli train ...`.
"""

import os
import sys

from .arguments import RECIPES_DIR


USAGE = "usage: opo-trl {train,quickstart,compare} [--config recipe.yaml] [--key value ...]"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE + "\n\n" + __doc__)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "compare":
        from .compare import main as compare_main

        return compare_main(rest)
    if command == "quickstart":
        recipe = RECIPES_DIR / "quickstart.yaml"
        if not recipe.is_file():
            raise FileNotFoundError(f"{recipe} not found: run `opo-trl quickstart` from a clone of the repository.")
        rest = ["--config", str(recipe)] + rest
    elif command != "train":
        print(f"opo-trl: unknown command {command!r}\n{USAGE}", file=sys.stderr)
        return 2
    from .run import main as run_main

    run_main(rest)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _exit_launched_process()
    return 0


def _exit_launched_process() -> None:
    """
    End a process started by `accelerate launch` or torchrun once its job is done, without the interpreter's teardown.

    DeepSpeed ZeRO-3 keeps process-group handles alive after the group is destroyed (its module-level
    `FWD_MODULE_STACK` holds the model, whose parameters hold `ds_process_group`; `deepspeed.utils.groups` holds the
    world group). Their gloo worker threads are then torn down at interpreter exit, where destroying a still-joinable
    thread calls std::terminate: about one launch in ten died of SIGABRT ("terminate called without an active
    exception") after its run had finished and written everything. The exit handlers still run; only that teardown is
    skipped.
    """
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
