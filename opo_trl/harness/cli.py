# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""
The `opo-trl` command.

    opo-trl train --config <recipe name or path> [--key value ...]   # any OPOConfig/GRPOConfig/ModelConfig key
    opo-trl train --config <recipe> --algorithm grpo                  # the same recipe with a baseline
    opo-trl train --config <recipe> --accelerate_config zero3 --num_processes 8   # through `accelerate launch`
    opo-trl quickstart [--seed 1]                                     # the quickstart recipe, offline, on a CPU
    opo-trl compare --config compare_cpu --seeds 0 1 2                # OPO vs GRPO, DAPO, GSPO (opo_trl.harness.compare)
    opo-trl recipes                                                   # the recipes shipped with the package

Command-line values override the recipe's, as in `trl grpo`. With an `accelerate launch` option (`--accelerate_config
NAME|PATH`, where NAME is one of TRL's shipped configs such as multi_gpu, zero2, zero3, fsdp2; `--num_processes`,
`--num_machines`, ...) the run is launched through accelerate, as `trl grpo` does; without one it runs in this
process. An error prints one line and exits with status 2; set OPO_TRL_DEBUG=1 for the traceback.
"""

import os
import sys


USAGE = "usage: opo-trl {train,quickstart,compare,recipes} [--config RECIPE] [--key value ...]"
# Errors of configuration, recipes and data: reported in one line, not as a traceback.
USER_ERRORS = (ValueError, FileNotFoundError, ImportError)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE + "\n\n" + __doc__)
        return 0
    try:
        return _dispatch(argv[0], argv[1:])
    except USER_ERRORS as e:
        if os.environ.get("OPO_TRL_DEBUG", "").lower() in ("1", "true", "yes"):
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"opo-trl: error: {message} (OPO_TRL_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2


def _dispatch(command: str, rest: list[str]) -> int:
    original_command, original_rest = command, list(rest)
    if command == "compare":
        from .compare import main as compare_main

        return compare_main(rest)
    if command == "recipes":
        from .arguments import recipes_location, shipped_recipes

        for name, description in shipped_recipes().items():
            print(f"{name:34s} {description}")
        print(f"\n(in {recipes_location()}; run one with `opo-trl train --config NAME`)")
        return 0
    if command == "quickstart":
        rest = ["--config", "quickstart", *rest]
    elif command != "train":
        print(f"opo-trl: error: unknown command {command!r}\n{USAGE}", file=sys.stderr)
        return 2
    if rest and rest[0] in ("-h", "--help"):
        from .algorithms import ALGORITHMS
        from .arguments import make_parser

        make_parser(ALGORITHMS["opo"].config_cls).print_help()
        return 0
    from .arguments import parse_command
    from .run import exit_launched_process, quiet_library_deprecations, train

    parsed = parse_command(rest)
    output_dir = parsed.training_args.output_dir
    created = not os.path.exists(output_dir)
    try:
        if parsed.launch_args and not _launched():
            _launch(parsed.launch_args, parsed.train_argv)
            return 0
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        quiet_library_deprecations()
        summary = train(parsed.script_args, parsed.training_args, parsed.model_args, parsed.dataset_args)
    except KeyboardInterrupt:
        # Ctrl-C: one line with the way back in, not the traceback of wherever training happened to be.
        from .checkpoints import interrupted_message, without_resume_option

        if int(os.environ.get("RANK", "0")) == 0:
            _close_progress_bars()
            command = ["opo-trl", original_command, *without_resume_option(original_rest)]
            message = interrupted_message(output_dir, created, parsed.training_args.save_strategy, command)
            print(f"\nopo-trl: {message}", file=sys.stderr)
        return 130
    import json

    print(json.dumps(summary, indent=2))
    exit_launched_process(ran_vllm=summary.get("generator") == "vllm")
    return 0


def _close_progress_bars() -> None:
    """Close the progress bars an interrupted run left open, so that they do not redraw after the last message."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", [])):
        bar.close()


def _launched() -> bool:
    """Whether this process was started by a launcher (accelerate, torchrun), whose options then are already applied."""
    return "LOCAL_RANK" in os.environ or os.environ.get("OPO_TRL_LAUNCHED") == "1"


def _launch(launch_args: list[str], train_argv: list[str]) -> None:
    """Run the training job through `accelerate launch`, resolving `--accelerate_config` with TRL's own resolver."""
    from accelerate.commands.launch import launch_command, launch_command_parser
    from trl.cli.accelerate_config import resolve_accelerate_config_argument

    launch_args = resolve_accelerate_config_argument(launch_args)
    os.environ["OPO_TRL_LAUNCHED"] = "1"
    launch_command(launch_command_parser().parse_args([*launch_args, "--module", "opo_trl.harness.run", *train_argv]))


if __name__ == "__main__":
    sys.exit(main())
