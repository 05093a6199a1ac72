"""The fused CPU kernel: it is what runs by default, and it computes what the eager kernel
does with correctly rounded square roots and coefficients (its ``exact`` mode)."""

import warnings

import pytest
import torch

import adamkit
from adamkit.kernels import fused_cpu
from adamkit.kernels.fused import FusedKernel
from adamkit.kernels.compile_cache import loops_for
from parity import EAGER, assert_bitwise_equal, assert_matches_torch, grads_for, make_params, run_side_by_side, step_together
from algorithms import ALGORITHMS, case_id as _algorithm_case_id

CASES = [(a.cls, flags) for a in ALGORITHMS for flags in a.flags]


def _params(dtype):
    """make_params' shapes plus tensors that span several work items, with a ragged end."""
    params = make_params(dtype)
    g = torch.Generator().manual_seed(5)
    sizes = [2 * fused_cpu.WORK_ITEM_ELEMENTS + 777, 1, 4096]
    return params + [torch.nn.Parameter(torch.randn(n, generator=g, dtype=dtype)) for n in sizes]


def case_id(case):
    return _algorithm_case_id(*case)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_fused_equals_exact_eager_bitwise(case, dtype, monkeypatch):
    """Every operation is the same, in the same order, with the same rounding: torch's
    lerp, addcmul and add(alpha=) round once on CPUs with FMA (x86-64 with AVX2, aarch64),
    as the fused kernel's do, and the square roots and coefficients are correctly
    rounded in both."""
    cls, flags = case
    torch.set_default_dtype(dtype)
    params = _params(dtype)
    fused = run_side_by_side(cls, cls, params, dict(lr=0.01, **flags), steps=8)
    # The default mode with the fused kernel taking nothing: the eager kernel runs exact.
    monkeypatch.setattr(FusedKernel, "takes", lambda self, param, grad: False)
    eager = run_side_by_side(cls, cls, params, dict(lr=0.01, **flags), steps=8)
    # The run's last step has a gradient for every parameter but the first.
    assert fused[3].last_step_kernels == {"fused_cpu": len(params) - 1}
    assert eager[3].last_step_kernels == {"eager": len(params) - 1}
    assert_bitwise_equal(eager[1], fused[1], eager[3], fused[3])


@pytest.mark.parametrize("cls,kwargs", [(adamkit.Adam, dict(weight_decay=0.1, amsgrad=True)),
                                        (adamkit.RMSprop, dict(momentum=0.9, centered=True))])
def test_fused_stays_within_an_ulp_bound_of_torch(cls, kwargs):
    """Against torch's own for-loop the differences are torch's sqrt and pow roundings:
    after 20 steps, within parity.ULP_BOUND."""
    torch_cls = getattr(torch.optim, cls.__name__)
    params = _params(torch.float32)
    theirs, ours, opt_t, opt = run_side_by_side(torch_cls, cls, params, dict(lr=0.01, **kwargs), steps=20)
    assert opt.last_step_kernels == {"fused_cpu": len(params) - 1}
    assert_matches_torch(theirs, ours, opt_t, opt, "default")


def _twin(p: torch.Tensor, transform) -> torch.nn.Parameter:
    return torch.nn.Parameter(transform(p.detach()).clone())


LAYOUTS = {
    "transposed": lambda g: torch.randn(12, 10, generator=g).t(),
    "channels_last": lambda g: torch.randn(2, 3, 4, 5, generator=g).contiguous(memory_format=torch.channels_last),
    "not dense": lambda g: torch.randn(12, 10, generator=g)[:, ::2],
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("cls,kwargs", [(adamkit.Adam, dict(weight_decay=0.1, amsgrad=True)),
                                        (adamkit.SGD, dict(momentum=0.9, nesterov=True)),
                                        (adamkit.RMSprop, dict(centered=True, momentum=0.5))])
def test_any_layout_steps_exactly_like_its_contiguous_twin(cls, kwargs, layout):
    """The update is elementwise, so where a tensor's elements lie must not change one bit.
    Dense layouts run in place; others through contiguous copies; all in the fused kernel."""
    g = torch.Generator().manual_seed(0)
    laid_out = torch.nn.Parameter(LAYOUTS[layout](g))
    twin = _twin(laid_out, torch.Tensor.contiguous)
    assert not laid_out.is_contiguous() and twin.is_contiguous()
    opt, reference = cls([laid_out], lr=0.01, **kwargs), cls([twin], lr=0.01, **kwargs)
    for _ in range(4):
        grad = torch.randn(twin.shape, generator=g)
        twin.grad = grad
        laid_out.grad = torch.empty_like(laid_out).copy_(grad)
        opt.step()
        reference.step()
    assert opt.last_step_kernels == {"fused_cpu": 1}
    assert torch.equal(laid_out, twin)
    for name, value in opt.state[laid_out].items():
        assert torch.equal(value, reference.state[twin][name]), name
        if name != "step" and layout != "not dense":
            assert value.stride() == laid_out.stride(), name  # state laid out like the parameter


@pytest.mark.parametrize("cls,kwargs", [(adamkit.Adam, dict(weight_decay=0.1)), (adamkit.Adagrad, dict(initial_accumulator_value=0.5)),
                                        (adamkit.SGD, dict(momentum=0.9, weight_decay=0.1)), (adamkit.Yogi, {})])
def test_complex_parameters_step_exactly_like_their_real_view(cls, kwargs):
    g = torch.Generator().manual_seed(1)
    complex_param = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.complex64, generator=g))
    real_param = _twin(complex_param, torch.view_as_real)
    opt, reference = cls([complex_param], lr=0.01, **kwargs), cls([real_param], lr=0.01, **kwargs)
    for _ in range(4):
        grad = torch.randn(4, 3, dtype=torch.complex64, generator=g)
        complex_param.grad, real_param.grad = grad, torch.view_as_real(grad).clone()
        opt.step()
        reference.step()
    assert opt.last_step_kernels == {"fused_cpu": 1}
    assert torch.equal(torch.view_as_real(complex_param.detach()), real_param)
    for name, value in opt.state[complex_param].items():
        expected = reference.state[real_param][name]
        assert torch.equal(torch.view_as_real(value) if value.is_complex() else value, expected), name


def test_schedulers_change_hyperparameters_without_recompiling():
    params = _params(torch.float32)
    opt = adamkit.Adam(params, lr=0.1)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10)
    loops = loops_for(adamkit.Adam.update_rule.name, adamkit.Adam.update_rule.update)
    compiled = {name: len(getattr(loops.module, name).signatures) for name in ("fused_pass", "advance_steps")}
    for step in range(8):
        for p, g in zip(params, grads_for(params, step)):
            p.grad = g
        opt.step()
        scheduler.step()
    assert opt.last_step_kernels == {"fused_cpu": len(params)}
    after = {name: len(getattr(loops.module, name).signatures) for name in compiled}
    assert after == {name: max(1, count) for name, count in compiled.items()}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_params_are_computed_in_fp32(dtype):
    """As torch's fused Adam: load to fp32, compute, round to nearest even on store."""
    g = torch.Generator().manual_seed(0)
    master = torch.randn(3000, generator=g)
    ours = torch.nn.Parameter(master.to(dtype))
    theirs = torch.nn.Parameter(master.to(dtype))
    opt = adamkit.Adam([ours], lr=0.01)
    reference = torch.optim.Adam([theirs], lr=0.01, fused=True)
    for step in range(5):
        grad = torch.randn(3000, generator=g).to(dtype)
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        opt.step()
        reference.step()
    assert opt.last_step_kernels == {"fused_cpu": 1}
    assert opt.state[ours]["exp_avg"].dtype == dtype
    # torch's fused kernel contracts some multiply-adds differently; allow one ulp of the type.
    ulp = torch.finfo(dtype).eps * theirs.detach().float().abs()
    assert ((ours.detach().float() - theirs.detach().float()).abs() <= ulp).all()
    assert not torch.equal(ours.detach(), master.to(dtype))


def test_mixed_dtypes_and_non_contiguous_params_in_one_group():
    g = torch.Generator().manual_seed(0)
    contiguous = [torch.nn.Parameter(torch.randn(50, generator=g, dtype=dt)) for dt in (torch.float32, torch.float64)]
    transposed = torch.nn.Parameter(torch.randn(4, 6, generator=g).t())
    params = contiguous + [transposed]
    opt = adamkit.Adam(params, lr=0.01)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    assert opt.last_step_kernels == {"fused_cpu": 3}
    assert all(opt.state[p]["exp_avg"].dtype == p.dtype for p in params)


def test_gradients_are_rechecked_every_step():
    """A plan made for one step's gradients is not trusted with the next step's: a
    gradient laid out unlike its parameter is stepped through a copy, with the same bits."""
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(6, 4, generator=g)) for _ in range(3)]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt, reference = adamkit.Adam(params, lr=0.01), adamkit.Adam(twins, lr=0.01)
    for step, layout in enumerate(["contiguous", "transposed", "contiguous"]):
        for p, q in zip(params, twins):
            grad = torch.randn(6, 4, generator=g)
            q.grad = grad
            p.grad = grad.t().contiguous().t() if layout == "transposed" and p is params[1] else grad.clone()
        opt.step()
        reference.step()
        assert opt.last_step_kernels == {"fused_cpu": 3}, step
    assert_bitwise_equal(twins, params, reference, opt)
    for dtype in (torch.float32, torch.float64):
        params[0].grad.data = torch.ones(3, dtype=dtype)  # the same object, changed past the grad setter
        with pytest.raises(RuntimeError, match="must match the size|expected dtype float"):
            opt.step()
        params[0].grad = torch.ones(6, 4)
        opt.step()
    params[0].grad = torch.ones(6, 4).to_sparse()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step()


def test_state_lives_in_one_buffer_per_dtype_and_name():
    params = _params(torch.float32)
    opt = adamkit.Adam(params, lr=0.01)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    for name in ("exp_avg", "exp_avg_sq", "step"):
        storages = {opt.state[p][name].untyped_storage().data_ptr() for p in params}
        assert len(storages) == 1, name
    exp_avg = opt.state[params[1]]["exp_avg"]
    assert exp_avg.shape == params[1].shape and exp_avg.is_contiguous()


def test_loaded_checkpoint_moves_into_flat_buffers_and_keeps_training():
    """A torch.optim.Adam checkpoint, loaded mid-run, continues as torch continues."""
    params = _params(torch.float32)
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    source = torch.optim.Adam(twins, lr=0.01)
    for step in range(3):
        for q, grad in zip(twins, grads_for(params, step)):
            q.grad = grad
        source.step()
    opt = adamkit.Adam(params, lr=0.01)
    opt.load_state_dict(source.state_dict())
    assert len({opt.state[p]["exp_avg"].untyped_storage().data_ptr() for p in params}) == 1
    with torch.no_grad():
        for p, q in zip(params, twins):
            p.copy_(q)
    step_together((params, opt), (twins, source), range(3, 6))
    assert opt.last_step_kernels == {"fused_cpu": len(params)}
    for p, q in zip(params, twins):
        assert opt.state[p]["step"].item() == 6.0
        torch.testing.assert_close(opt.state[p]["exp_avg_sq"], source.state[q]["exp_avg_sq"], rtol=0, atol=0)
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_zero_grad_warning_comes_from_the_fused_pass():
    p = torch.nn.Parameter(torch.ones(100))
    opt = adamkit.AdamW([p], lr=0.1)
    p.grad = torch.zeros(100)
    with pytest.warns(UserWarning, match="all-zero gradient but a step changed it"):
        opt.step()
    assert opt.last_step_kernels == {"fused_cpu": 1}
    quiet = adamkit.Adam([torch.nn.Parameter(torch.ones(100))], lr=0.1)
    quiet.param_groups[0]["params"][0].grad = torch.zeros(100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet.step()  # zero grad, no decay, no momentum: nothing moves, nothing to say


def test_zero_grad_parameters_are_watched_in_their_own_pass_with_the_same_results():
    """Watching all-zero-gradient parameters for movement changes nothing else: the
    same bits as with the warning off, and only the parameter that moved is named."""
    def run(warn):
        g = torch.Generator().manual_seed(3)
        params = [torch.nn.Parameter(torch.randn(n, generator=g)) for n in (3 * fused_cpu.WORK_ITEM_ELEMENTS + 5, 7, 11)]
        opt = adamkit.AdamW(params, lr=0.1, weight_decay=0.5, warn_zero_grad_update=warn)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for step in range(3):
                for p in params:
                    p.grad = torch.randn(p.shape, generator=g)
                params[1].grad = torch.zeros(7)
                opt.step()
        assert opt.last_step_kernels == {"fused_cpu": 3}
        return params, opt, [str(w.message) for w in caught]

    watched, opt, messages = run(warn=True)
    unwatched, other, silent = run(warn=False)
    assert len(messages) == 1 and "shape (7,)" in messages[0] and not silent
    assert_bitwise_equal(unwatched, watched, other, opt)


def test_skip_nonfinite_checks_fused_gradients():
    params = _params(torch.float32)
    opt = adamkit.Adam(params, lr=0.01, skip_nonfinite=True)
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.ones_like(p)
    params[-3].grad[fused_cpu.WORK_ITEM_ELEMENTS + 5] = float("inf")
    with pytest.warns(UserWarning, match="skipped a step"):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    params[-3].grad = torch.ones_like(params[-3])
    opt.step()
    assert opt.skipped_steps == 1 and opt.last_step_kernels == {"fused_cpu": len(params)}


def test_dtensor_params_run_fused_on_their_local_shard(tmp_path):
    """FSDP2 shards parameters as DTensors: the kernel runs on to_local(), state stays DTensor."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        g = torch.Generator().manual_seed(0)
        full = torch.randn(8, 4, generator=g)
        sharded = torch.nn.Parameter(distribute_tensor(full.clone(), mesh, [Shard(0)]))
        plain = torch.nn.Parameter(full.clone())
        opt, reference = adamkit.Adam([sharded], lr=0.1), adamkit.Adam([plain], lr=0.1)
        for _ in range(3):
            grad = torch.randn(8, 4, generator=g)
            sharded.grad = distribute_tensor(grad, mesh, [Shard(0)])
            plain.grad = grad.clone()
            opt.step()
            reference.step()
        assert opt.last_step_kernels == {"fused_cpu": 1}
        assert isinstance(opt.state[sharded]["exp_avg"], DTensor)
        assert torch.equal(sharded.detach().full_tensor(), plain.detach())
        assert torch.equal(opt.state[sharded]["exp_avg_sq"].full_tensor(), reference.state[plain]["exp_avg_sq"])
    finally:
        dist.destroy_process_group()


def test_adagrad_state_made_at_construction_is_flat():
    params = _params(torch.float32)
    opt = adamkit.Adagrad(params, lr=0.1, initial_accumulator_value=0.5)
    for name in ("sum", "step"):
        assert len({opt.state[p][name].untyped_storage().data_ptr() for p in params}) == 1, name
    assert all(torch.equal(opt.state[p]["sum"], torch.full_like(p, 0.5)) for p in params)
    opt.reset_state(params[:3])
    assert len({opt.state[p]["sum"].untyped_storage().data_ptr() for p in params[:3]}) == 1
    assert opt.state[params[0]]["sum"].untyped_storage().data_ptr() != opt.state[params[4]]["sum"].untyped_storage().data_ptr()


@pytest.mark.parametrize("bad", ["dense", "transposed", "sparse"])
def test_skip_nonfinite_sees_every_gradient_layout(bad):
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4, 6, generator=g)) for _ in range(3)]
    opt = adamkit.SGD(params, lr=0.1, skip_nonfinite=True)
    for p in params:
        p.grad = torch.randn(4, 6, generator=g)
    params[1].grad = params[1].grad.t().contiguous().t()
    params[2].grad = params[2].grad.to_sparse()
    target = {"dense": params[0], "transposed": params[1], "sparse": params[2]}[bad]
    if bad == "sparse":
        target.grad = torch.sparse_coo_tensor(torch.tensor([[1], [2]]), torch.tensor([float("nan")]), (4, 6))
    else:
        target.grad[1, 2] = float("inf")
    before = [p.detach().clone() for p in params]
    with pytest.warns(UserWarning, match="skipped a step"):
        opt.step()
    assert opt.skipped_steps == 1 and all(torch.equal(p, b) for p, b in zip(params, before))


def test_any_nonzero_reads_each_tensor_as_the_zero_gradient_agreement_needs():
    """An empty shard holds nothing nonzero; NaN is nonzero; one nonzero element at the end counts."""
    last = torch.zeros(70_000)
    last[-1] = 1e-45  # the smallest subnormal
    tensors = [
        torch.zeros(5), torch.zeros(0, 64), torch.tensor([0.0, float("nan")]), last,
        torch.zeros(3, dtype=torch.bfloat16), torch.tensor([0.0, -0.0, 2.0], dtype=torch.float64),
        torch.zeros(4, dtype=torch.complex64), torch.zeros(6, 4).t(),
    ]
    assert fused_cpu.readable(tensors) == [True] * len(tensors)
    assert fused_cpu.any_nonzero(tensors) == [
        False, False, True, True, False, True, False, False,
    ]


@pytest.mark.parametrize("state_dtype,max_grad_norm", [(None, None), ("bf16", None), ("int8", None), (None, 1.0)])
def test_warmup_compiles_what_the_first_step_runs_and_changes_nothing(state_dtype, max_grad_norm, monkeypatch):
    """After ``adamkit.warmup`` the first step compiles nothing (clipping's norm loop
    included); warmup itself leaves parameters, gradients, state and step counts as they were."""
    loops = loops_for(adamkit.AdamW.update_rule.name, adamkit.AdamW.update_rule.update)
    monkeypatch.setattr(loops, "_ready", set())  # as in a new process
    compiled = []
    real_compile = loops._compile
    monkeypatch.setattr(loops, "_compile", lambda name, args: (compiled.append(name), real_compile(name, args)))
    with_grad, without = torch.nn.Parameter(torch.randn(300)), torch.nn.Parameter(torch.randn(4, 5, dtype=torch.float64))
    with_grad.grad = torch.randn(300)
    before = [with_grad.detach().clone(), without.detach().clone(), with_grad.grad.clone()]
    optimizer = adamkit.AdamW([with_grad, without], lr=0.1, weight_decay=0.1, state_dtype=state_dtype,
                              low_precision_min_elements=0, max_grad_norm=max_grad_norm)
    adamkit.warmup(optimizer)
    assert compiled and "fused_pass" in compiled
    assert optimizer.last_grad_norm is None
    assert len(optimizer.state) == 0 and optimizer.rounds == 0 and without.grad is None
    assert all(map(torch.equal, before, [with_grad.detach(), without.detach(), with_grad.grad]))
    compiled.clear()
    without.grad = torch.randn(4, 5, dtype=torch.float64)
    optimizer.step()
    assert compiled == [] and optimizer.last_step_kernels == {"fused_cpu": 2}
    assert int(optimizer.state[with_grad]["step"]) == 1


@pytest.mark.parametrize("lr_dtype", [torch.float32, torch.float64])
def test_a_tensor_lr_gives_fp64_parameters_coefficients_computed_in_double(lr_dtype):
    """The default kernel computes coefficients from the tensor's value in double
    precision, correctly rounded, as from the same number passed as a float (torch's
    for-loop rounds lr / (1 - beta1^t) to the tensor's dtype; ``foreach=False`` does too)."""
    lr = torch.tensor(0.01, dtype=lr_dtype)
    g = torch.Generator().manual_seed(11)
    start = torch.randn(1000, generator=g, dtype=torch.float64)
    grads = [torch.randn(1000, generator=g, dtype=torch.float64) for _ in range(4)]
    results = []
    for value in (lr, lr.item()):
        p = torch.nn.Parameter(start.clone())
        optimizer = adamkit.AdamW([p], lr=value, weight_decay=0.1)
        for grad in grads:
            p.grad = grad.clone()
            optimizer.step()
        assert optimizer.last_step_kernels == {"fused_cpu": 1}
        results.append(p.detach())
    assert torch.equal(*results)


def test_scalar_state_that_differs_between_parameters_steps_each_with_its_own():
    """NAdam's mu_product set by hand, to NaN for one parameter and to another value for
    a second: each parameter steps with its own coefficients, as on the eager kernel
    (NaN spreads to that parameter only)."""
    results = []
    for kernel in ({}, EAGER):
        params = [torch.nn.Parameter(torch.ones(5)) for _ in range(3)]
        optimizer = adamkit.NAdam(params, lr=0.1, **kernel)
        for step in range(3):
            for p in params:
                p.grad = torch.full((5,), 0.5)
            optimizer.step()
            if step == 0:
                optimizer.state[params[0]]["mu_product"].fill_(float("nan"))
                optimizer.state[params[1]]["mu_product"].fill_(0.25)
        results.append([p.detach().clone() for p in params] + [optimizer.state[p]["mu_product"] for p in params])
    fused, eager = results
    assert torch.isnan(fused[0]).all() and not torch.isnan(torch.stack(fused[1:3])).any()
    assert not torch.equal(fused[1], fused[2])
    for a, b in zip(fused, eager):
        torch.testing.assert_close(a, b, equal_nan=True, rtol=1e-6, atol=0)


def test_a_mixture_of_experts_keeps_a_layout_per_set_of_experts(monkeypatch):
    """Each step another set of experts has gradients: after one round, each set steps
    on the layout kept for it (no plan made again), with the same bits as when every
    step lays out its plans anew."""
    from adamkit.kernels import fused

    sets = [{0, 1}, {2, 3}, {1, 2}, {0, 3}]

    def run(layouts_kept):
        monkeypatch.setattr(fused, "MAX_LAYOUTS", layouts_kept)
        made = []
        original = FusedKernel._lay_out
        monkeypatch.setattr(FusedKernel, "_lay_out", lambda self, *a: made.append(1) or original(self, *a))
        experts = make_params(torch.float32, seed=4)
        optimizer = adamkit.Adam(experts, lr=0.01, weight_decay=0.1)
        for step in range(3 * len(sets) + 1):
            active = set(range(len(experts))) if step == 0 else sets[step % len(sets)]  # step 0: every state made
            for index, (p, grad) in enumerate(zip(experts, grads_for(experts, step))):
                p.grad = grad if index in active else None
            optimizer.step()
            if step == len(sets):
                made.clear()
        monkeypatch.undo()
        return experts, optimizer, len(made)

    kept, kept_optimizer, made_later = run(8)
    anew, anew_optimizer, made_anew = run(1)
    assert made_later == 0 and made_anew == 2 * len(sets)
    assert_bitwise_equal(anew, kept, anew_optimizer, kept_optimizer)
