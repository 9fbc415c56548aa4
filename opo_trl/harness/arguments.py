# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""
Arguments of `opo-trl train`: the script arguments, and a recipe read once into TRL's dataclasses.

A recipe is a `trl grpo` YAML file plus, optionally, `algorithm:` and the OPO fields. It is read once; its values
become the parser's defaults (as `TrlParser` does with `--config`), so command-line values override it. `--config`
takes a path or the name of a recipe shipped with the package (`opo-trl recipes` lists them). As with `trl grpo`,
options of `accelerate launch` (`--accelerate_config NAME|PATH`, `--num_processes`, ...) may appear on the command
line or in the recipe; they are returned apart, for the launcher.
"""

import dataclasses
import difflib
import importlib.resources
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments, TrlParser

from .algorithms import ALGORITHMS, opo_only_fields
from .data import DATASET_ARGUMENTS, check_not_a_misspelled_builtin, dataset_kind_of_name


def _recipes_dir():
    try:  # installed from a wheel: the recipes ship as the package opo_trl.recipes
        return importlib.resources.files("opo_trl.recipes")
    except ModuleNotFoundError:  # a source checkout (or an editable install of one): recipes/ beside the package
        return Path(__file__).resolve().parents[2] / "recipes"


RECIPES_DIR = _recipes_dir()


def recipes_location() -> str:
    """The folder of the shipped recipes on disk (from a wheel they are a namespace package, not a plain path)."""
    entry = next((e for e in RECIPES_DIR.iterdir() if e.name.endswith(".yaml")), None)
    return str(Path(str(entry)).parent) if entry is not None else str(RECIPES_DIR)


def shipped_recipes() -> dict[str, str]:
    """Name -> first comment line of every recipe shipped with the package."""
    recipes = {}
    for entry in sorted(RECIPES_DIR.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            first = next((line for line in entry.read_text().splitlines() if line.startswith("#")), "#")
            recipes[entry.name.removesuffix(".yaml")] = first.lstrip("# ").strip()
    return recipes


def resolve_recipe(name_or_path: str) -> str:
    """A recipe's path: the path itself if it is a file, else the shipped recipe of that name."""
    if Path(name_or_path).is_file():
        return name_or_path
    name = Path(name_or_path).name.removesuffix(".yaml")
    candidate = RECIPES_DIR.joinpath(f"{name}.yaml")
    if name_or_path in (name, f"{name}.yaml") and candidate.is_file():
        return str(candidate)
    close = difflib.get_close_matches(name, list(shipped_recipes()), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise FileNotFoundError(
        f"Recipe not found: {name_or_path!r} is neither a file nor a shipped recipe.{hint} "
        f"Shipped recipes: {', '.join(shipped_recipes())}."
    )


@dataclass
class OPOScriptArguments(ScriptArguments):
    """
    Script arguments of `opo-trl train`: TRL's [`~trl.ScriptArguments`] and `trl grpo`'s reward arguments, plus the
    algorithm, the built-in datasets' options and the held-out evaluation.
    """

    algorithm: str = field(
        default="opo",
        metadata={
            "help": "Trainer to run the recipe with: 'opo', or a baseline 'grpo', 'dapo', 'gspo'.",
            "choices": list(ALGORITHMS),
        },
    )
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "'arithmetic' (offline generator), 'reasoning_gym/<task>' (offline, `pip install opo-trl[gym]`), "
            "'gsm8k', 'math' (MATH-lighteval), or any dataset id or path for `datasets.load_dataset` with a 'prompt' "
            "column. Ignored when `datasets` (a dataset mixture) is given."
        },
    )
    reward_model_name_or_path: str | None = field(
        default=None, metadata={"help": "A sequence-classification reward model, added before `reward_funcs`."}
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["accuracy"],
        metadata={
            "help": "Reward functions: 'accuracy', 'format', 'reasoning_gym', TRL's names ('accuracy_reward', ...), "
            "or dotted paths 'module.function' (importable from the current directory)."
        },
    )
    dataset_options: dict | str | None = field(
        default=None,
        metadata={
            "help": "reasoning_gym: options of the task's config, as a mapping in the recipe or JSON on the command "
            'line, e.g. \'{"min_terms": 2, "max_terms": 3}\'.'
        },
    )
    dataset_seed: int | None = field(
        default=None,
        metadata={"help": "arithmetic, reasoning_gym: seed of the generated problems (default: the training seed)."},
    )
    num_train_samples: int = field(default=2000, metadata={"help": "arithmetic, reasoning_gym: training problems."})
    num_test_samples: int = field(default=64, metadata={"help": "arithmetic, reasoning_gym: held-out problems."})
    num_validation_samples: int = field(
        default=0, metadata={"help": "reasoning_gym: validation problems, disjoint from train and test (for tuning)."}
    )
    min_operand: int = field(default=1, metadata={"help": "arithmetic: smallest operand."})
    max_operand: int = field(default=50, metadata={"help": "arithmetic: largest operand."})
    operations: list[str] = field(default_factory=lambda: ["+"], metadata={"help": "arithmetic: among '+', '-', '*'."})
    math_levels: list[int] | None = field(default=None, metadata={"help": "math: keep only these levels, e.g. 3."})
    heldout_eval: bool = field(
        default=False,
        metadata={"help": "Measure accuracy on held-out problems before and after training, and print both."},
    )
    heldout_split: str = field(
        default="test",
        metadata={"help": "Split the held-out evaluation uses: 'test', or 'validation' (reasoning_gym) for tuning."},
    )
    heldout_max_samples: int | None = field(default=None, metadata={"help": "Cap on held-out prompts (all if unset)."})
    heldout_num_samples: int = field(
        default=1, metadata={"help": "Completions sampled per held-out prompt at the training temperature."}
    )
    heldout_greedy: bool = field(default=False, metadata={"help": "Also measure greedy-decoding accuracy."})
    heldout_batch_size: int = field(
        default=96,
        metadata={
            "help": "Sequences per `generate` call of the held-out evaluation (with vLLM, the engine batches itself)."
        },
    )
    heldout_eval_steps: int | None = field(
        default=None, metadata={"help": "Also measure held-out accuracy every this many optimizer steps."}
    )
    heldout_interim_max_samples: int | None = field(
        default=None,
        metadata={"help": "Cap on held-out prompts for the evaluations during training (one sample each, no greedy)."},
    )
    pause_file: str | None = field(
        default=None,
        metadata={
            "help": "A file whose appearance makes the run save a checkpoint at the end of its current optimizer step "
            "and stop, without its final evaluation; `resume_from_checkpoint: last` then finishes it, and its summary "
            "counts the wall time of both parts."
        },
    )
    heldout_before_from: str | None = field(
        default=None,
        metadata={
            "help": "Output directory of a finished run of the same model, data and seed: reuse its held-out "
            "evaluation before training instead of measuring it again."
        },
    )

    def __post_init__(self):
        # Checked at parse time, so that a recipe mistake is a one-line error before anything loads.
        unused = [] if self.heldout_eval else changed_fields(self, HELDOUT_ARGUMENTS)
        if unused:
            raise ValueError(f"{', '.join(unused)} only apply with heldout_eval: true; set it or remove them.")
        if self.heldout_batch_size < 1:
            raise ValueError(f"heldout_batch_size must be >= 1, got {self.heldout_batch_size}.")
        if self.dataset_name is not None:
            self.check_dataset_arguments(dataset_kind_of_name(self.dataset_name))

    def check_dataset_arguments(self, kind: str) -> None:
        """Raise if a dataset argument is set that a dataset of `kind` (see `data.DATASET_ARGUMENTS`) does not read."""
        for name in changed_fields(self, DATASET_ARGUMENTS):
            kinds = DATASET_ARGUMENTS[name]
            if kind not in kinds:
                # A misspelt built-in name reads as a hub id: the name is the mistake to report, not the option.
                if kind == "hub":
                    check_not_a_misspelled_builtin(self.dataset_name)
                raise ValueError(
                    f"{name}={getattr(self, name)!r} applies to dataset_name {' or '.join(map(repr, kinds))} only, "
                    f"not to {self.dataset_name if kind != 'mixture' else 'a dataset mixture'!r}; remove it."
                )


# Script arguments that shape the held-out evaluation: without `heldout_eval` they would do nothing.
HELDOUT_ARGUMENTS = (
    "heldout_split", "heldout_max_samples", "heldout_num_samples", "heldout_greedy", "heldout_batch_size",
    "heldout_eval_steps", "heldout_interim_max_samples", "heldout_before_from",
)  # fmt: skip


def changed_fields(args, names) -> list[str]:
    """The fields among `names` whose value in the dataclass instance `args` differs from the field's default."""
    defaults = {
        f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        for f in dataclasses.fields(args)
    }
    return [name for name in names if getattr(args, name) != defaults[name]]


def make_parser(config_cls) -> TrlParser:
    # No abbreviations: `--learning_rat` must be an error, not learning_rate.
    return TrlParser(
        (OPOScriptArguments, config_cls, ModelConfig, DatasetMixtureConfig), prog="opo-trl train", allow_abbrev=False
    )


def load_recipe(name_or_path: str) -> dict:
    """Read a recipe (a YAML mapping) from a path or a shipped recipe's name."""
    path = Path(resolve_recipe(name_or_path))
    recipe = yaml.safe_load(path.read_text()) or {}
    if not isinstance(recipe, dict):
        raise ValueError(f"Recipe {name_or_path} must contain a YAML mapping, not a {type(recipe).__name__}.")
    return recipe


@dataclass
class TrainArguments:
    """Everything `opo-trl train` parses: TRL's dataclasses, and what goes to `accelerate launch`."""

    script_args: OPOScriptArguments
    training_args: object
    model_args: ModelConfig
    dataset_args: DatasetMixtureConfig
    launch_args: list[str]  # for `accelerate launch`, from the command line and the recipe
    train_argv: list[str]  # the command line without them, for the launched processes


def parse_train_args(argv: list[str]):
    """Parse `opo-trl train` arguments into `(script_args, training_args, model_args, dataset_args)`."""
    parsed = parse_command(argv)
    return parsed.script_args, parsed.training_args, parsed.model_args, parsed.dataset_args


def parse_command(argv: list[str]) -> TrainArguments:
    """
    Parse `opo-trl train` arguments.

    The algorithm decides the config class: `OPOConfig` for OPO, `GRPOConfig` with the baseline's settings otherwise.
    For a baseline, the recipe's and the command line's OPO-only keys are dropped (they mean nothing to GRPO, and a
    message says so), and the baseline's settings override the recipe's but not the command line. Options of
    `accelerate launch` are set apart; any other key that no dataclass has is an error naming the closest valid key.
    """
    argv = list(argv)
    config_path = _pop_option(argv, "--config")
    if config_path is not None:
        config_path = resolve_recipe(config_path)
    recipe = load_recipe(config_path) if config_path is not None else {}
    # As TrlParser does with --config: the recipe's `env` mapping becomes environment variables.
    env = recipe.pop("env", {})
    if not isinstance(env, dict):
        raise ValueError("`env` must be a mapping in the recipe.")
    for key, value in env.items():
        os.environ[key] = str(value)

    algorithm = (_pop_option(argv, "--algorithm") or recipe.get("algorithm", "opo")).lower()
    if algorithm not in ALGORITHMS:
        close = difflib.get_close_matches(algorithm, list(ALGORITHMS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"algorithm={algorithm!r} is invalid; algorithm must be one of {list(ALGORITHMS)}.{hint}")
    spec = ALGORITHMS[algorithm]
    recipe["algorithm"] = algorithm
    if spec.settings:
        dropped = sorted(opo_only_fields() & set(recipe))
        recipe = {k: v for k, v in recipe.items() if k not in dropped}
        recipe.update(spec.settings)
        argv, dropped_cli = _drop_options(argv, opo_only_fields())
        if dropped or dropped_cli:
            print(
                f"[opo-trl] {algorithm}: ignoring OPO-only keys {sorted(set(dropped) | set(dropped_cli))}",
                file=sys.stderr,
            )

    parser = make_parser(spec.config_cls)
    fields = {f.name for dc in parser.dataclass_types for f in dataclasses.fields(dc)}
    launch_options = _accelerate_options(exclude=fields)
    train_argv = [*(["--config", config_path] if config_path else []), "--algorithm", algorithm]
    argv, launch_args = _split_launch_options(argv, launch_options)
    train_argv += argv
    for key in [k for k in recipe if k in launch_options]:
        value = recipe.pop(key)
        if launch_options[key] == 0:  # a flag
            launch_args += [f"--{key}"] if value else []
        else:
            launch_args += [f"--{key}", str(value)]

    recipe_unknown = parser.set_defaults_with_config(**recipe)
    *parsed, cli_unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    unknown = [s for s in recipe_unknown + cli_unknown if s.startswith("--")]
    if unknown:
        raise ValueError(_unknown_keys_message(unknown, sorted(fields | set(launch_options)), config_path))
    script_args, _, _, dataset_args = parsed
    if dataset_args.datasets:  # a dataset mixture, which the script arguments alone do not know of
        script_args.check_dataset_arguments("mixture")
    return TrainArguments(*parsed, launch_args=launch_args, train_argv=train_argv)


def _accelerate_options(exclude: set[str]) -> dict[str, int]:
    """`accelerate launch` options (without their dashes) -> how many values they take; TRL's `accelerate_config`."""
    from accelerate.commands.launch import launch_command_parser

    options = {"accelerate_config": 1}
    for action in launch_command_parser()._actions:
        for option in action.option_strings:
            if option.startswith("--") and option[2:] not in exclude and option != "--help":
                options[option[2:]] = 0 if action.nargs == 0 else 1
    return options


def _split_launch_options(argv: list[str], options: dict[str, int]) -> tuple[list[str], list[str]]:
    rest, launch, i = [], [], 0
    while i < len(argv):
        key = argv[i][2:].split("=")[0] if argv[i].startswith("--") else None
        if key in options:
            takes = 0 if "=" in argv[i] else options[key]
            launch += argv[i : i + 1 + takes]
            i += 1 + takes
        else:
            rest.append(argv[i])
            i += 1
    return rest, launch


def _unknown_keys_message(unknown, valid, config_path):
    parts = []
    for key in unknown:
        name = key[2:].split("=")[0]
        close = difflib.get_close_matches(name, valid, n=1)
        parts.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    where = f" in {config_path} or on the command line" if config_path else ""
    return (
        f"Unknown key(s){where}: {'; '.join(parts)}. Keys are OPOConfig/GRPOConfig, ModelConfig, script and "
        "`accelerate launch` arguments."
    )


def _pop_option(argv: list[str], name: str) -> str | None:
    """Remove `name value` or `name=value` from `argv` and return the value (the last one if repeated)."""
    value = None
    i = 0
    while i < len(argv):
        if argv[i] == name and i + 1 < len(argv):
            value = argv[i + 1]
            del argv[i : i + 2]
        elif argv[i].startswith(name + "="):
            value = argv.pop(i).split("=", 1)[1]
        else:
            i += 1
    return value


def _drop_options(argv: list[str], names: set[str]) -> tuple[list[str], list[str]]:
    """Remove the options in `names` (with their values) from `argv`; returns what is left and what was removed."""
    out, dropped, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        key = arg[2:].split("=")[0] if arg.startswith("--") else None
        if key in names:
            dropped.append(key)
            i += 1
            if "=" not in arg:
                while i < len(argv) and not argv[i].startswith("--"):  # its value(s)
                    i += 1
            continue
        out.append(arg)
        i += 1
    return out, dropped
