import math
import warnings

import pytest
import torch
from trl import GRPOConfig, TrlParser

from opo_trl import OPOConfig
from opo_trl.core import ESCORT_FORMS, EscortBatch, opo_sequence_loss
from opo_trl.harness.testing import group_advantages


def make(tmp_path, **kwargs):
    return OPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", **kwargs)


def test_the_defaults_train_the_papers_objective(tmp_path):
    args = make(tmp_path)
    assert isinstance(args, GRPOConfig)
    # One group of four with binary rewards. Centred only (GRPO's default would divide A = +-0.5 by the group std),
    # then the exponential escort at alpha 0.4, T = 1, no reference: g = w - mean w = +-sinh(0.6 * 0.5).
    advantages = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 4, args.scale_rewards)
    batch = EscortBatch(advantages, 4, torch.ones(4, dtype=torch.bool), None, lambda a: pytest.fail("no reference"))
    drive = ESCORT_FORMS[args.escort_form].drive(args, batch).drive
    s = math.sinh(0.3)
    torch.testing.assert_close(drive, torch.tensor([s, -s, -s, s]))
    # The loss of a sequence whose two tokens each rose by 0.5 nats: Delta is their mean, the quadratic acts on Delta
    # with mu = 1, and there is no KL term: -g * 0.5 + 0.5 * 0.5**2.
    logps, old = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -2.5]])
    loss = opo_sequence_loss(
        logps, old, torch.ones(1, 2), drive[:1], args.mu, args.log_ratio_aggregation, args.ratio_form, beta=args.beta
    ).loss
    assert loss.item() == pytest.approx(-s * 0.5 + 0.5 * 0.25, rel=1e-5)


@pytest.mark.parametrize(
    "field, value, allowed",
    [
        ("alpha", 1.0, r"\[0, 1\)"),
        ("alpha", -0.1, r"\[0, 1\)"),
        ("mu", 0.0, "> 0"),
        ("mu", float("inf"), "finite"),
        ("mu", float("nan"), "finite"),
        ("log_ratio_aggregation", "max", "mean"),
        ("ratio_form", "sqrt", "exact"),
        ("max_escort_exponent", 0.0, r"\(0, 30\]"),
        ("escort_reference", "full", "sum"),
        ("mu_target_chi2", 0.0, "> 0"),
        ("mu_target_chi2", float("inf"), "finite"),
        ("mu_min", -1.0, "> 0"),
        ("scale_rewards", "std", "group"),
    ],
)
def test_invalid_values_name_field_value_and_range(tmp_path, field, value, allowed):
    with pytest.raises(ValueError, match=rf"{field}={value!r}.*{allowed}" if isinstance(value, str) else field) as err:
        make(tmp_path, **{field: value})
    assert allowed.replace("\\", "") in str(err.value)


def test_each_field_is_documented_from_its_help_alone():
    import ast
    import dataclasses
    import inspect

    from opo_trl import config

    grpo = {f.name: f.default for f in dataclasses.fields(GRPOConfig)}
    documented = [f for f in dataclasses.fields(OPOConfig) if f.name not in grpo or f.default != grpo[f.name]]
    assert {"alpha", "escort_form", "direction_scale", "scale_rewards"} <= {f.name for f in documented}
    # The docstring as written in the source documents no field: the help is the one home of each field's text.
    (cls,) = [n for n in ast.parse(inspect.getsource(config)).body if getattr(n, "name", None) == "OPOConfig"]
    written = ast.get_docstring(cls)
    assert [f.name for f in documented if f"{f.name} (`" in written] == []
    doc = " ".join(OPOConfig.__doc__.split())
    for f in documented:
        help_text = " ".join(f.metadata["help"].split())
        default = f'"{f.default}"' if isinstance(f.default, str) else f.default
        assert f"{f.name} (" in doc and f"defaults to `{default}`): {help_text}" in doc, f.name
        assert "benchmark" not in help_text, f"{f.name}'s help quotes a result that will go stale"


def test_grpo_configs_own_checks_run_before_opos(tmp_path):
    # One group of one completion has no centred drive: GRPOConfig's own check says so, and `scale_rewards=True` from
    # an old GRPO recipe is normalised by GRPOConfig before OPO validates it.
    with pytest.raises(ValueError, match="at least 2 generations per prompt"):
        make(tmp_path, num_generations=1)
    assert make(tmp_path, scale_rewards=True).scale_rewards == "group"


@pytest.mark.parametrize(
    "field, value",
    [
        ("top_entropy_quantile", 0.2),
        ("off_policy_mask_threshold", 0.5),
        ("use_adaptive_entropy", True),
    ],
)
def test_objective_changing_grpo_options_are_rejected(tmp_path, field, value):
    with pytest.raises(ValueError, match=f"{field}={value!r} is not supported by OPO"):
        make(tmp_path, **{field: value})


def test_grpo_clipping_options_are_reported_once_not_applied(tmp_path):
    with pytest.warns(UserWarning, match="ignores these GRPO options") as record:
        args = make(tmp_path, loss_type="dapo", epsilon_high=0.28, importance_sampling_level="sequence")
    messages = [str(w.message) for w in record if "ignores these GRPO options" in str(w.message)]
    assert len(messages) == 1
    assert "epsilon_high=0.28" in messages[0] and "importance_sampling_level='sequence'" in messages[0]
    assert "loss_type" not in messages[0]  # 'dapo' is GRPOConfig's own default, so nothing was asked for
    assert args.ignored_grpo_options == {"epsilon_high": 0.28, "importance_sampling_level": "sequence"}


def test_default_config_warns_nothing(tmp_path):
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*ignores these GRPO options.*")
        make(tmp_path)


GRPO_YAML = """
output_dir: {out}
use_cpu: true
bf16: false
report_to: none
learning_rate: 1.0e-6
loss_type: grpo
scale_rewards: group
epsilon: 0.2
beta: 0.0
num_generations: 4
per_device_train_batch_size: 4
max_completion_length: 64
"""
DAPO_YAML = GRPO_YAML.replace("loss_type: grpo", "loss_type: dapo").replace(
    "scale_rewards: group", "scale_rewards: none"
) + ("epsilon_high: 0.28\nmask_truncated_completions: true\n")
GSPO_YAML = (
    GRPO_YAML.replace("epsilon: 0.2", "epsilon: 3.0e-4\nepsilon_high: 4.0e-4")
    + "importance_sampling_level: sequence\n"
)


@pytest.mark.parametrize("recipe", [GRPO_YAML, DAPO_YAML, GSPO_YAML], ids=["grpo", "dapo", "gspo"])
def test_grpo_dapo_gspo_yaml_parse_into_opoconfig_unchanged(tmp_path, recipe):
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe.format(out=tmp_path / "out"))
    (grpo_args,) = TrlParser((GRPOConfig,)).parse_args_and_config(["--config", str(path)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (opo_args,) = TrlParser((OPOConfig,)).parse_args_and_config(["--config", str(path)])
    assert isinstance(opo_args, OPOConfig)
    for key in (
        "learning_rate",
        "epsilon",
        "epsilon_high",
        "num_generations",
        "mask_truncated_completions",
        "scale_rewards",
    ):
        assert getattr(opo_args, key) == getattr(grpo_args, key), key


def test_cli_overrides_opo_fields(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(GRPO_YAML.format(out=tmp_path / "out") + "alpha: 0.2\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (args,) = TrlParser((OPOConfig,)).parse_args_and_config(["--config", str(path), "--mu", "4"])
    assert (args.alpha, args.mu) == (0.2, 4.0)


def test_every_grpo_config_option_is_used_ignored_or_rejected():
    """A TRL release that adds a GRPOConfig option fails here until the option is classified in opo_trl.config."""
    import dataclasses

    from transformers import TrainingArguments

    from opo_trl.config import IGNORED_GRPO_FIELDS, REJECTED_GRPO_FIELDS, USED_GRPO_FIELDS

    grpo_own = {f.name for f in dataclasses.fields(GRPOConfig)} - {
        f.name for f in dataclasses.fields(TrainingArguments)
    }
    tables = {"used": set(USED_GRPO_FIELDS), "ignored": set(IGNORED_GRPO_FIELDS),
              "rejected": {name for name, _ in REJECTED_GRPO_FIELDS}}  # fmt: skip
    for a in tables:
        for b in tables:
            assert a == b or not tables[a] & tables[b], f"{tables[a] & tables[b]} are both {a} and {b}"
    classified = set().union(*tables.values())
    assert not grpo_own - classified, f"GRPOConfig options OPO does not classify yet: {sorted(grpo_own - classified)}"
    assert not classified - grpo_own, f"classified options GRPOConfig no longer has: {sorted(classified - grpo_own)}"
