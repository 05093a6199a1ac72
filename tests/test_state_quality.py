"""Low-precision state trains as well as fp32 state: the final loss of the same run
(same seed, weights and batches) no more than 1% above fp32's for bf16, 2% for int8.
A lower loss passes: it is not worse training (RAdam's int8 run of digits ends 3.4%
below fp32's).

Every tensor's state is stored in the format under test, small ones too
(``low_precision_min_elements = 0``), as ``adamkit compare --state-dtype`` does;
with the default threshold the airfoil model would keep fp32 state throughout.
The default suite runs short versions; ``-m slow`` runs each task as long as
``adamkit compare`` does.
"""

import functools

import pytest

import adamkit
from adamkit.optimizers.registry import build_optimizer
from adamkit.tasks import TASKS
from adamkit.training import train

TOLERANCE = {"bf16": 0.01, "int8": 0.02}

# SGD with momentum, as plain SGD keeps no state.
ALGORITHMS = {
    "adam": lambda params, **options: adamkit.Adam(params, **options),
    "amsgrad": lambda params, **options: adamkit.Adam(params, amsgrad=True, **options),
    "adamw": lambda params, **options: adamkit.AdamW(params, **options),
    "yogi": lambda params, **options: adamkit.Yogi(params, **options),
    "rmsprop": lambda params, **options: adamkit.RMSprop(params, centered=True, **options),
    "adagrad": lambda params, **options: adamkit.Adagrad(params, **options),
    "sgd": lambda params, **options: adamkit.SGD(params, momentum=0.9, **options),
    **{name: functools.partial(build_optimizer, name)
       for name in ("adamax", "radam", "nadam", "adadelta", "rprop", "asgd", "lion", "adopt", "ademamix", "adan", "schedulefree")},
}
# ASGD's only state, ax, is the running average it reports; the steps never read it.
OUTPUT_ONLY_STATE = {"asgd"}
MOMENTUM_SGD_RATES = {"airfoil": 0.005, "digits": 0.03, "chars": 0.03}


def final_losses(task: str, algorithm: str, epochs: int) -> dict[str, float]:
    lr = MOMENTUM_SGD_RATES[task] if algorithm == "sgd" else TASKS[task].learning_rates[algorithm]
    losses = {}
    for state_dtype in ("fp32", "bf16", "int8"):
        def build(params):
            return ALGORITHMS[algorithm](params, lr=lr, state_dtype=state_dtype, low_precision_min_elements=0)

        losses[state_dtype] = train(build, task=task, epochs=epochs, seed=0).final_loss
    return losses


def check_within_tolerance(losses: dict[str, float], algorithm: str) -> None:
    for state_dtype, tolerance in TOLERANCE.items():
        change = losses[state_dtype] / losses["fp32"] - 1
        assert change <= tolerance, f"{state_dtype}: {change:+.2%} from fp32 ({losses})"
    if losses["int8"] == losses["fp32"]:  # the state really went through the int8 format ...
        assert algorithm in OUTPUT_ONLY_STATE  # ... unless the state never feeds the update


# Each algorithm compiles its own bf16 and int8 passes: three in the default run
# (Adagrad for its state made at construction), every one with -m slow.
DEFAULT_RUN = ("adam", "sgd", "adagrad")


@pytest.mark.parametrize(
    "algorithm", [pytest.param(a, marks=() if a in DEFAULT_RUN else pytest.mark.slow) for a in ALGORITHMS]
)
def test_every_algorithm_trains_the_airfoil_model_as_with_fp32_state(algorithm):
    check_within_tolerance(final_losses("airfoil", algorithm, epochs=2), algorithm)


@pytest.mark.parametrize("task, epochs", [("digits", 5), ("chars", 1)])
def test_adam_trains_the_classifier_and_the_transformer_as_with_fp32_state(task, epochs):
    check_within_tolerance(final_losses(task, "adam", epochs), "adam")


# Measured 2026-12-03 (full length, this AMD EPYC). digits is deterministic and not
# chaotic (lr times 1 + 1e-6 moves the final loss by under 0.05%); chars is: the same
# nudge moved it by +1.9% (Schedule-Free), -2.4% (NAdam), +1.3% (AdEMAMix). The int8
# shortfalls of that day (ADOPT, Schedule-Free, NAdam: 3.8-5.0% above fp32, increments
# lost by codes rounded to nearest) passed once the codes were rounded stochastically.
SHORTFALLS = {
    ("digits", "rprop"): "bf16 +51%: Rprop does not learn digits from minibatches (fp32 ends at 1.96)",
    ("chars", "ademamix"): "bf16 +2.5% (chaos about 1.3%)",
    ("chars", "schedulefree"): "bf16 +2.0% (chaos about 1.9%)",
}


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("task", ["digits", "chars"])
def test_full_length_runs_train_as_with_fp32_state(task, algorithm, request):
    if (task, algorithm) in SHORTFALLS:
        request.applymarker(pytest.mark.xfail(reason=SHORTFALLS[task, algorithm], strict=False))
    check_within_tolerance(final_losses(task, algorithm, TASKS[task].epochs), algorithm)

