# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
import dataclasses
import inspect
import re
import textwrap
import warnings
from dataclasses import dataclass, field

from trl import GRPOConfig

from .core import (
    ESCORT_FORMS,
    ESCORT_REFERENCES,
    LOG_RATIO_AGGREGATIONS,
    MAX_ESCORT_EXPONENT,
    MAX_ESCORT_EXPONENT_LIMIT,
    POSITIVE,
    RATIO_FORMS,
    SCALE_REWARDS,
    Allowed,
    EscortForm,
    current_escort_normalization,
    one_of,
)


# Every option GRPOConfig adds to `transformers.TrainingArguments` is in exactly one of the three tables below (a test
# keeps it so, and fails on an option a new TRL release adds): used as GRPOTrainer uses it, ignored with a warning,
# or rejected.

# Options OPOTrainer uses exactly as GRPOTrainer does: model loading, generation, vLLM, rewards and advantages, the
# KL to a reference, logging.
USED_GRPO_FIELDS = (
    "model_init_kwargs", "trust_remote_code", "router_aux_loss_coef", "disable_dropout", "cast_lm_head_to_fp32",
    "num_generations", "num_generations_eval", "max_completion_length", "ds3_gather_for_generation",
    "shuffle_dataset", "pad_to_multiple_of", "generation_batch_size", "steps_per_generation", "temperature", "top_p",
    "top_k", "min_p", "generation_kwargs", "chat_template_kwargs", "repetition_penalty", "cache_implementation",
    "use_vllm", "vllm_mode", "vllm_model_impl", "vllm_enable_sleep_mode", "vllm_structured_outputs_regex",
    "vllm_server_base_url", "vllm_server_host", "vllm_server_port", "vllm_server_timeout", "vllm_group_port",
    "vllm_gpu_memory_utilization", "vllm_max_model_length", "vllm_tensor_parallel_size",
    "vllm_importance_sampling_correction", "vllm_importance_sampling_mode", "vllm_importance_sampling_clip_max",
    "vllm_importance_sampling_clip_min", "vllm_importance_sampling_cap", "beta", "num_iterations", "reward_weights",
    "entropy_coef",
    "multi_objective_aggregation", "scale_rewards", "mask_truncated_completions", "sync_ref_model",
    "ref_model_mixup_alpha", "ref_model_sync_steps", "max_tool_calling_iterations", "use_bias_correction_kl",
    "log_completions", "log_multimodal", "num_completions_to_print", "log_unique_prompts", "log_completions_hub_repo",
    "use_transformers_continuous_batching", "transformers_continuous_batching_config", "use_transformers_paged",
)  # fmt: skip

# GRPOConfig options that shape GRPO's clipped token loss and that OPO's objective has no use for. A GRPO, DAPO or
# GSPO recipe sets them, so they must parse; when set away from their default they are reported once, not applied.
IGNORED_GRPO_FIELDS = (
    "loss_type",
    "epsilon",
    "epsilon_high",
    "delta",
    "importance_sampling_level",
    "sapo_temperature_neg",
    "sapo_temperature_pos",
    "vespo_k_pos",
    "vespo_lambda_pos",
    "vespo_k_neg",
    "vespo_lambda_neg",
    # The adaptive entropy controller's settings: they act only with `use_adaptive_entropy`, which is rejected.
    "entropy_coef_min",
    "entropy_coef_max",
    "entropy_coef_delta",
    "entropy_target",
)

# GRPOConfig options that change the objective in a way OPO does not define. Silently dropping them would train
# something other than what the user asked for, so a non-default value is an error. Each entry: (name, why).
REJECTED_GRPO_FIELDS = (
    ("top_entropy_quantile", "OPO weights whole sequences; a token entropy mask would change Delta."),
    ("off_policy_mask_threshold", "OPO's quadratic term already restrains off-policy sequences."),
    (
        "use_adaptive_entropy",
        "its controller lives inside GRPOTrainer._compute_loss and cannot be reused without copying it; a static "
        "entropy_coef works.",
    ),
)


@dataclass
class OPOConfig(GRPOConfig):
    r"""
    Configuration class for the [`OPOTrainer`].

    Orthogonalized Policy Optimization (OPO, [Wang, 2026](https://huggingface.co/papers/2601.12415)) replaces GRPO's
    advantages with the alpha-escort drive and GRPO's clipped token loss with a quadratic (chi-square) ratio loss.
    Every [`GRPOConfig`] argument is accepted, so GRPO, DAPO and GSPO recipes parse unchanged; the options that only
    shape GRPO's clipped loss (`loss_type`, `epsilon`, `epsilon_high`, `delta`, `importance_sampling_level`, ...) are
    reported once and not used. Not to be confused with verl's `adv_estimator: opo` (an optimal-baseline estimator).
    Each escort form ([`~core.ESCORT_FORMS`]) owns some of the fields below: setting one away from its default under
    another form is an error.
    """

    # Each field's `help` is the one home of its text: the "Parameters" section of this docstring is written from it
    # (`_parameters_doc`).

    alpha: float = field(
        default=0.4,
        metadata={
            "help": "Escort exponent in [0, 1). With `escort_form='exp'` the sample weights are "
            "`exp((1 - alpha) * A)`: lower is more aggressive towards high-advantage completions, and alpha -> 1 gives "
            "no update. With `'softmax_mixture'` alpha is the weight of the reward softmax q in "
            "`w ∝ q^alpha p^(1 - alpha)`, so its direction is reversed: alpha -> 1 is the pure reward softmax."
        },
    )
    mu: float = field(
        default=1.0,
        metadata={
            "help": "Stiffness of the chi-square trust region (> 0); the optimum of one step is `Delta = g / mu`. It "
            "only acts when a rollout is reused for more than one optimizer step (`num_iterations > 1` or "
            "`steps_per_generation > gradient_accumulation_steps`). Not to be confused with `num_iterations`, which "
            "TRL's help calls μ."
        },
    )
    log_ratio_aggregation: str = field(
        default="mean",
        metadata={
            "help": "How token log-ratios make the sequence log-ratio Delta: `'mean'` (per-token mean, as in the "
            "authors' released code) or `'sum'` (the paper's formula).",
            "choices": list(LOG_RATIO_AGGREGATIONS),
        },
    )
    ratio_form: str = field(
        default="log",
        metadata={
            "help": "`escort_form='exp'` only. `'log'`: the quadratic acts on Delta (the paper's surrogate, always a "
            "valid density). `'exact'`: on `exp(Delta) - 1`.",
            "choices": list(RATIO_FORMS),
        },
    )
    escort_reference: str = field(
        default="none",
        metadata={
            "help": "`escort_form='exp'` only. The rollout policy's log-probability in the escort weight, "
            "`w = exp((1 - alpha) * (A - c))` with `c = l - mean_group(l)`: `'none'` (`c = 0`, pi_k treated as "
            "uniform over the group), `'sum'` (the paper's Algorithm 1: `l = log pi_k(y)`, summed over tokens) or "
            "`'mean'` (`l` = per-token mean of log pi_k). With a reference, among completions of equal advantage the "
            "less likely ones get more drive, and a group whose rewards all tie is still driven, towards the "
            "completions pi_k found unlikely.",
            "choices": list(ESCORT_REFERENCES),
        },
    )
    mu_target_chi2: float | None = field(
        default=None,
        metadata={
            "help": "`escort_form='exp'` only. If set, `mu` is chosen per rollout so that the closed-form step "
            "`v* = g / mu` spends exactly this chi-square budget: `mu = sqrt(mean(g^2) / mu_target_chi2)`, clamped to "
            "`[mu_min, mu_max]`; `mu` is then unused. `None` keeps `mu` fixed."
        },
    )
    mu_min: float = field(default=0.1, metadata={"help": "Lower clamp of the mu chosen with `mu_target_chi2`."})
    mu_max: float = field(default=100.0, metadata={"help": "Upper clamp of the mu chosen with `mu_target_chi2`."})
    max_escort_exponent: float = field(
        default=MAX_ESCORT_EXPONENT,
        metadata={
            "help": "`escort_form='exp'` only. Cap on the escort exponent, so that no reward scale overflows the "
            f"weights; at most {MAX_ESCORT_EXPONENT_LIMIT:g}."
        },
    )
    escort_temperature: float = field(
        default=1.0,
        metadata={
            "help": "`escort_form='exp'` only. Temperature T > 0 of the escort's target `P* ∝ exp(A / T)`: "
            "`w = exp((1 - alpha) * (A / T - c))`. Below 1 the weighting is peak-seeking; at 1 with binary rewards the "
            "drive is nearly linear in A (GRPO-like)."
        },
    )
    escort_normalization: str = field(
        default="subtract_mean",
        metadata={
            "help": "`escort_form='exp'` only. `'subtract_mean'`: `g = w - mean_group(w)` (the paper's projection). "
            "`'divide_by_mean'`: `g = w / mean_group(w) - 1`, the self-normalised escort ratio: scale-free (in "
            "`[-1, G - 1]` whatever T), computed in log space (no cap). The former names `'none'` and `'mean'` still "
            "work, with a warning."
        },
    )
    escort_form: str = field(
        default="exp",
        metadata={
            "help": "The registered escort form that computes the drive (`opo_trl.core.ESCORT_FORMS`). `'exp'`: the "
            "paper's exponential escort. `'softmax_mixture'`: the authors' released code (verl `loss_variant: opo`): "
            "`w ∝ q^alpha p^(1 - alpha)` per group with `q = softmax(A / reward_temperature)` and "
            "`p = softmax(clamp(Delta, ±log_ratio_clip) / ratio_temperature)` recomputed at every optimizer step of a "
            "reused rollout, drive `direction_scale * (G * w - 1)`, quadratic on the clamped Delta.",
            "choices": ESCORT_FORMS.keys(),  # a live view: a form registered later is a choice too
        },
    )
    reward_temperature: float = field(
        default=0.3,
        metadata={
            "help": "`escort_form='softmax_mixture'` only. beta_r of `q = softmax(A / beta_r)`. The authors' code "
            "defaults to 0.3; their configs use 0.15 (`opo_qwen3_math.yaml`) and 0.3 "
            "(`opo_megatron_qwen3_math_fp8.yaml`)."
        },
    )
    ratio_temperature: float = field(
        default=0.5,
        metadata={
            "help": "`escort_form='softmax_mixture'` only. tau of `p = softmax(clamp(Delta) / tau)`; 0.5 in the "
            "authors' code and configs (which also turn on an adaptive tau, not implemented here)."
        },
    )
    log_ratio_clip: float = field(
        default=5.0,
        metadata={
            "help": "`escort_form='softmax_mixture'` only. Delta is clamped to [-c, c] inside p and the quadratic "
            "(the authors' 5.0)."
        },
    )
    direction_scale: float | None = field(
        default=None,
        metadata={
            "help": "`escort_form='softmax_mixture'` only. s in the drive `s * (G * w - 1)`; `None` is 1 / alpha "
            "(the authors' `opo_direction_scale`; their `opo_qwen3_math.yaml` sets 1.33)."
        },
    )
    scale_rewards: str = field(
        default="none",
        metadata={
            "help": "Reward scaling after group centring: `'none'` (OPO centres rewards per group only: the mean "
            "subtraction is the conservation-law projection), `'group'` (divide by the group std, as in GRPO) or "
            "`'batch'` (divide by the batch std)."
        },
    )

    def __post_init__(self):
        # GRPOConfig first: it normalises `scale_rewards` and checks `num_generations`, so OPO's checks see final values.
        super().__post_init__()
        # Recipes written with the former names ('none', 'mean') keep working.
        self.escort_normalization = current_escort_normalization(self.escort_normalization, stacklevel=4)
        _check_opo_fields(self)
        self.ignored_grpo_options = _report_ignored_grpo_fields(self)


# OPOConfig's fields that every escort form reads, with the values they allow; each form's own are in its registration.
SHARED_FIELDS = {
    "alpha": Allowed(lambda value: isinstance(value, (int, float)) and 0.0 <= value < 1.0, "a float in [0, 1)"),
    "mu": POSITIVE,
    "log_ratio_aggregation": one_of(LOG_RATIO_AGGREGATIONS),
    "mu_min": POSITIVE,
    "mu_max": POSITIVE,
    "scale_rewards": one_of(SCALE_REWARDS),
}


def _parameters_doc(cls) -> str:
    """The "Parameters" section of `cls`'s docstring, in TRL's style, from the `help` of the fields it adds or changes."""

    def type_name(tp):
        names = [a.__name__ if a is not type(None) else "None" for a in getattr(tp, "__args__", (tp,))]
        return " or ".join(f"`{name}`" for name in names)

    def entry(f):
        default = f'"{f.default}"' if isinstance(f.default, str) else f.default
        # No line break inside a `code span`: its spaces are protected while the text is filled.
        text = re.sub(r"`[^`]*`", lambda m: m.group().replace(" ", "\0"), f.metadata["help"])
        text = textwrap.fill(
            text, width=116, initial_indent=" " * 8, subsequent_indent=" " * 8, break_on_hyphens=False
        )
        return (
            f"    {f.name} ({type_name(f.type)}, *optional*, defaults to `{default}`):\n{text.replace(chr(0), ' ')}\n"
        )

    grpo = {f.name: f for f in dataclasses.fields(GRPOConfig)}
    own = [f for f in dataclasses.fields(cls) if f.name not in grpo]
    changed = [f for f in dataclasses.fields(cls) if f.name in grpo and f.default != grpo[f.name].default]
    return "".join(
        ["Parameters:\n", *map(entry, own), "\n> Parameters whose defaults differ from [`GRPOConfig`]\n\n"]
        + [*map(entry, changed)]
    )


OPOConfig.__doc__ = inspect.cleandoc(OPOConfig.__doc__) + "\n\n" + _parameters_doc(OPOConfig)


def _check_opo_fields(args: "OPOConfig") -> None:
    def fail(name, allowed):
        raise ValueError(f"OPOConfig: {name}={getattr(args, name)!r} is invalid; {name} must be {allowed}.")

    def check(name, allowed):
        if not allowed.test(getattr(args, name)):
            fail(name, allowed.description)

    for name, allowed in SHARED_FIELDS.items():
        check(name, allowed)
    if args.mu_min > args.mu_max:
        fail("mu_min", f"at most mu_max={args.mu_max!r}")
    if not (isinstance(args.escort_form, str) and args.escort_form in ESCORT_FORMS):
        fail("escort_form", f"one of {list(ESCORT_FORMS)}")
    form = ESCORT_FORMS[args.escort_form]
    for name, allowed in form.fields.items():
        check(name, allowed)
    _check_other_forms_fields(args, form)
    problem = form.check(args) if form.check is not None else None
    if problem is not None:
        raise ValueError(f"OPOConfig: {problem}")
    defaults = _grpo_defaults()
    for name, why in REJECTED_GRPO_FIELDS:
        if getattr(args, name) != defaults[name]:
            raise ValueError(
                f"OPOConfig: {name}={getattr(args, name)!r} is not supported by OPO ({why}) Remove it or set it to "
                f"its default {defaults[name]!r}."
            )


def _check_other_forms_fields(args: "OPOConfig", form: EscortForm) -> None:
    # A field that only other escort forms read has no effect: away from its default it is an error.
    defaults = {f.name: f.default for f in dataclasses.fields(args)}
    for other in ESCORT_FORMS.values():
        for name in other.fields.keys() - form.fields.keys():
            if name in defaults and getattr(args, name) != defaults[name]:
                raise ValueError(
                    f"OPOConfig: {name}={getattr(args, name)!r} has no effect with escort_form={form.name!r}; "
                    f"remove it or set escort_form={other.name!r}."
                )


def _report_ignored_grpo_fields(args: "OPOConfig") -> dict:
    defaults = _grpo_defaults()
    ignored = {name: getattr(args, name) for name in IGNORED_GRPO_FIELDS if getattr(args, name) != defaults[name]}
    if ignored:
        listed = ", ".join(f"{k}={v!r}" for k, v in ignored.items())
        warnings.warn(
            f"OPOConfig ignores these GRPO options: {listed}. OPO has no ratio clipping and no token-level loss: its "
            f"quadratic term (mu={args.mu}) is the trust region, and Delta is aggregated per sequence "
            f"(log_ratio_aggregation={args.log_ratio_aggregation!r}).",
            UserWarning,
            stacklevel=3,
        )
    return ignored


def _grpo_defaults() -> dict:
    return {f.name: f.default for f in dataclasses.fields(GRPOConfig) if f.default is not dataclasses.MISSING}
