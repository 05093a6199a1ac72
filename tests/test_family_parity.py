"""adamkit's torch.optim drop-ins (tests/algorithms.py; Adam in test_adam_parity.py) against torch.optim,
bit for bit on CPU, whole flag matrices."""

import copy
import functools

import pytest
import torch

import adamkit
from algorithms import ALGORITHMS, WITH_TORCH, case_id
from parity import EAGER, KERNELS, assert_bitwise_equal, assert_matches, make_params, run_side_by_side

# Adam and AdamW: test_adam_parity.py
FAMILY = [a for a in WITH_TORCH if a.cls not in (adamkit.Adam, adamkit.AdamW)]
CASES = [(a.torch_cls, a.cls, flags) for a in FAMILY for flags in a.flags]


def _case_id(case):
    return case_id(case[1], case[2])


# Each flag set runs real with a float lr and complex with a tensor lr; the other two
# pairings with -m slow (torch's own configurations cover them in test_torch_optimizer_info.py).
PAIRINGS = [pytest.param(c, t, marks=() if c == t else pytest.mark.slow, id=f"complex={c}-tensor_lr={t}")
            for c in (False, True) for t in (False, True)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("complex_,tensor_lr", PAIRINGS)
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_matches_torch_bitwise(case, dtype, complex_, tensor_lr):
    torch_cls, adamkit_cls, flags = case
    torch.set_default_dtype(dtype)
    params = make_params(dtype, complex_=complex_, contiguous=not complex_)
    lr = torch.tensor(0.01) if tensor_lr else 0.01
    assert_bitwise_equal(*run_side_by_side(torch_cls, adamkit_cls, params, dict(lr=lr, **flags), adamkit_kwargs=EAGER))


@pytest.mark.parametrize("torch_cls,adamkit_cls", [(a.torch_cls, a.cls) for a in FAMILY], ids=[a.name for a in FAMILY])
def test_defaults_and_state_dict_layout_match_torch(torch_cls, adamkit_cls):
    params = make_params(torch.float32)
    result = run_side_by_side(torch_cls, adamkit_cls, params, {})
    theirs, ours, opt_t, opt_a = result
    assert opt_a.defaults == opt_t.defaults
    sd_t, sd_a = opt_t.state_dict(), opt_a.state_dict()
    assert sd_a["param_groups"] == sd_t["param_groups"]
    assert {k: sorted(v) for k, v in sd_a["state"].items()} == {k: sorted(v) for k, v in sd_t["state"].items()}


@pytest.mark.parametrize("torch_cls,adamkit_cls,kwargs", [(a.torch_cls, a.cls, dict(lr=0.01, **a.spot)) for a in FAMILY],
                         ids=[a.name for a in FAMILY])
@pytest.mark.parametrize("direction", ["torch->adamkit", "adamkit->torch"])
@pytest.mark.parametrize("kernel", list(KERNELS))
def test_checkpoints_move_both_ways(torch_cls, adamkit_cls, kwargs, direction, kernel):
    """A checkpoint taken mid-run by one library continues on the other's trajectory:
    exactly for adamkit's for-loop kernel, within parity.ULP_BOUND for the default one."""
    params = make_params(torch.float32)
    ours = functools.partial(adamkit_cls, **KERNELS[kernel])
    first, second = (torch_cls, ours) if direction == "torch->adamkit" else (ours, torch_cls)
    reference, _, opt_ref, _ = run_side_by_side(first, first, params, kwargs, steps=4)
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in reference]
    opt_resumed = second(resumed, **kwargs)
    opt_resumed.load_state_dict(copy.deepcopy(opt_ref.state_dict()))
    for group in opt_resumed.param_groups:  # the checkpoint brought its own
        group["foreach"] = KERNELS[kernel].get("foreach")
    for step in range(4, 9):
        for p_ref, p_res in zip(reference, resumed):
            g = torch.randn(p_ref.shape, generator=torch.Generator().manual_seed(step))
            p_ref.grad, p_res.grad = g.clone(), g.clone()
        opt_ref.step()
        opt_resumed.step()
    for p_ref, p_res in zip(reference, resumed):
        assert_matches(p_ref, p_res, kernel)


def test_sgd_sparse_gradient_matches_torch():
    for momentum in (0.0, 0.9):
        weights = [torch.nn.Parameter(torch.randn(6, 3, generator=torch.Generator().manual_seed(0))) for _ in range(2)]
        opts = [torch.optim.SGD([weights[0]], lr=0.1, momentum=momentum), adamkit.SGD([weights[1]], lr=0.1, momentum=momentum)]
        for step in range(3):
            grad = torch.sparse_coo_tensor(torch.tensor([[step, 4]]), torch.randn(2, 3, generator=torch.Generator().manual_seed(step)), (6, 3))
            for w, opt in zip(weights, opts):
                w.grad = grad.clone()
                opt.step()
        assert torch.equal(weights[0], weights[1])


def test_adagrad_sparse_gradient_matches_torch():
    weights = [torch.nn.Parameter(torch.randn(6, 3, generator=torch.Generator().manual_seed(0))) for _ in range(2)]
    opts = [torch.optim.Adagrad([weights[0]], lr=0.1), adamkit.Adagrad([weights[1]], lr=0.1)]
    for step in range(3):
        # index 1 appears twice: the update must coalesce before squaring
        grad = torch.sparse_coo_tensor(torch.tensor([[1, 1, step + 2]]), torch.randn(3, 3, generator=torch.Generator().manual_seed(step)), (6, 3))
        for w, opt in zip(weights, opts):
            w.grad = grad.clone()
            opt.step()
    assert torch.equal(weights[0], weights[1])
    assert torch.equal(opts[0].state[weights[0]]["sum"], opts[1].state[weights[1]]["sum"])
    w = torch.nn.Parameter(torch.zeros(3, 2))
    w.grad = torch.sparse_coo_tensor(torch.tensor([[0]]), torch.ones(1, 2), (3, 2))
    with pytest.raises(RuntimeError, match="weight_decay option is not compatible with sparse gradients"):
        adamkit.Adagrad([w], weight_decay=0.1).step()


REFUSE_SPARSE = [a.cls for a in ALGORITHMS if a.cls not in (adamkit.SGD, adamkit.Adagrad)]


@pytest.mark.parametrize("cls", REFUSE_SPARSE, ids=[cls.__name__ for cls in REFUSE_SPARSE])
def test_sparse_gradient_refused_with_torchs_message(cls):
    """torch's message where torch has the class; the step changes nothing."""
    def sparse_parameter():
        w = torch.nn.Parameter(torch.zeros(3, 2))
        w.grad = torch.sparse_coo_tensor(torch.tensor([[0]]), torch.ones(1, 2), (3, 2))
        return w

    w = sparse_parameter()
    optimizer = cls([w])
    with pytest.raises(RuntimeError) as ours:
        optimizer.step()
    assert str(ours.value) == cls.sparse_grad_error
    if hasattr(torch.optim, cls.__name__):
        with pytest.raises(RuntimeError) as theirs:
            getattr(torch.optim, cls.__name__)([sparse_parameter()]).step()
        assert str(ours.value) == str(theirs.value)
    assert torch.count_nonzero(w) == 0 and optimizer.state[w] == {}


@pytest.mark.parametrize("kwargs", [dict(lr=-1.0), dict(momentum=-0.5), dict(weight_decay=-1.0),
                                    dict(momentum=0.0, nesterov=True), dict(lr=torch.tensor([0.1, 0.2]))])
def test_sgd_constructor_errors_match_torch(kwargs):
    _assert_same_error(torch.optim.SGD, adamkit.SGD, kwargs)


@pytest.mark.parametrize("kwargs", [dict(lr=-1.0), dict(eps=-1.0), dict(momentum=-1.0), dict(weight_decay=-1.0), dict(alpha=-1.0)])
def test_rmsprop_constructor_errors_match_torch(kwargs):
    _assert_same_error(torch.optim.RMSprop, adamkit.RMSprop, kwargs)


@pytest.mark.parametrize("kwargs", [dict(lr=-1.0), dict(lr_decay=-1.0), dict(weight_decay=-1.0),
                                    dict(initial_accumulator_value=-1.0), dict(eps=-1.0)])
def test_adagrad_constructor_errors_match_torch(kwargs):
    _assert_same_error(torch.optim.Adagrad, adamkit.Adagrad, kwargs)


def _assert_same_error(torch_cls, adamkit_cls, kwargs):
    params = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(Exception) as theirs:
        torch_cls(params, **kwargs)
    with pytest.raises(Exception) as ours:
        adamkit_cls(params, **kwargs)
    assert type(ours.value) is type(theirs.value)
    assert str(ours.value) == str(theirs.value)


LARGE_CASES = [
    (torch.optim.Adam, adamkit.Adam, dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    (torch.optim.AdamW, adamkit.AdamW, dict(lr=0.01, maximize=True)),
    (torch.optim.SGD, adamkit.SGD, dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=0.1)),
    (torch.optim.RMSprop, adamkit.RMSprop, dict(lr=0.01, momentum=0.9, centered=True)),
    (torch.optim.Adagrad, adamkit.Adagrad, dict(lr=0.01, lr_decay=0.01, weight_decay=0.1)),
]


@pytest.mark.parametrize("complex_", [False, True])
@pytest.mark.parametrize("torch_cls,adamkit_cls,kwargs", LARGE_CASES, ids=[c[0].__name__ for c in LARGE_CASES])
def test_chunked_large_tensors_match_torch(torch_cls, adamkit_cls, kwargs, complex_):
    """Tensors of several kernel chunks, with a ragged last chunk, stay bitwise equal."""
    from adamkit.kernels.eager import CHUNK_ELEMENTS

    g = torch.Generator().manual_seed(0)
    sizes = [2 * CHUNK_ELEMENTS + 12345, CHUNK_ELEMENTS + 1]
    dtype = torch.complex64 if complex_ else torch.float32
    params = [torch.nn.Parameter(torch.randn(n, generator=g, dtype=dtype)) for n in sizes]
    assert_bitwise_equal(*run_side_by_side(torch_cls, adamkit_cls, params, kwargs, steps=4, adamkit_kwargs=EAGER))


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_centered_rmsprop_takes_no_root_of_a_variance_rounding_made_negative(kernel):
    """s - a^2 >= 0 in exact arithmetic, but rounding can put s just below a^2 (int8
    state did on the char transformer at step 282). torch's square root then gives NaN
    and the parameter is lost; adamkit takes the variance as 0, as it is up to rounding.
    Where s - a^2 >= 0 the bits are torch's (the sweeps above)."""
    grad_avg = torch.full((64,), 0.5)
    runs = {}
    for name, cls, flags in (("torch", torch.optim.RMSprop, {"foreach": False}), ("adamkit", adamkit.RMSprop, KERNELS[kernel])):
        p = torch.nn.Parameter(torch.zeros(64))
        optimizer = cls([p], lr=0.01, centered=True, alpha=0.9, **flags)
        p.grad = grad_avg.clone()
        optimizer.step()
        state = optimizer.state[p]
        state["grad_avg"].copy_(grad_avg)
        state["square_avg"].copy_(grad_avg * grad_avg * (1 - 2**-20))  # a hair below a^2
        optimizer.step()  # the gradient equals a: s - a^2 stays negative
        runs[name] = p.detach().clone()
    assert runs["torch"].isnan().all()
    assert torch.isfinite(runs["adamkit"]).all()
