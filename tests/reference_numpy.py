"""A float64 NumPy reference of every update rule adamkit implements.

Written from the papers' formulas (with torch.optim's conventions), independently of
torch and of adamkit's own code: this module imports neither. Every ``*_step`` function
is pure: it takes a parameter, its gradient, the algorithm's state (a dict of arrays,
named as torch names them) and the step number ``t`` (1 for the first step), and
returns ``(new_param, new_state)`` without touching its inputs.

Conventions shared by all rules (torch's):

* ``maximize``: the gradient is negated first.
* L2 weight decay: ``g = g + weight_decay * param`` (after ``maximize``).
* decoupled weight decay (AdamW; Yogi with ``decoupled=True``):
  ``param = param * (1 - lr * weight_decay)`` before the update, gradient unchanged.

``*_init`` functions give the state of a parameter before its first step.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "adam_init",
    "adam_step",
    "yogi_init",
    "yogi_step",
    "yogi_v_d2l",
    "sgd_init",
    "sgd_step",
    "rmsprop_init",
    "rmsprop_step",
    "adagrad_init",
    "adagrad_step",
    "lion_step",
    "adopt_step",
    "ademamix_step",
    "adan_step",
    "schedule_free_adamw_step",
]


def _f64(x) -> np.ndarray:
    return np.array(x, dtype=np.float64, copy=True)


def _out(param, state: dict):
    """(param, state) as float64 ndarrays (0-dim results of NumPy arithmetic are scalars)."""
    return np.asarray(param, dtype=np.float64), {k: np.asarray(v, dtype=np.float64) for k, v in state.items()}


def _prepare(param, grad, *, lr, weight_decay, maximize, decoupled):
    """Apply maximize and weight decay; returns (param, effective gradient)."""
    p = _f64(param)
    g = _f64(grad)
    if maximize:
        g = -g
    if weight_decay != 0:
        if decoupled:
            p = p * (1.0 - lr * weight_decay)
        else:
            g = g + weight_decay * p
    return p, g


# --------------------------------------------------------------------------- Adam


def adam_init(param, *, amsgrad: bool = False) -> dict:
    """Adam's moments start at zero."""
    shape = np.shape(param)
    state = {"exp_avg": np.zeros(shape), "exp_avg_sq": np.zeros(shape)}
    if amsgrad:
        state["max_exp_avg_sq"] = np.zeros(shape)
    return state


def adam_step(
    param,
    grad,
    state: dict,
    t: int,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
    maximize: bool = False,
    decoupled: bool = False,
):
    """Adam (Kingma & Ba, 2015); AMSGrad (Reddi et al., 2018); AdamW with ``decoupled``.

    m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  (amsgrad: vmax = max(vmax, v), use vmax)
    param -= lr / (1-b1^t) * m / (sqrt(v_used) / sqrt(1-b2^t) + eps)
    """
    p, g = _prepare(param, grad, lr=lr, weight_decay=weight_decay, maximize=maximize, decoupled=decoupled)
    m = beta1 * _f64(state["exp_avg"]) + (1.0 - beta1) * g
    v = beta2 * _f64(state["exp_avg_sq"]) + (1.0 - beta2) * g * g
    new_state = {"exp_avg": m, "exp_avg_sq": v}
    v_used = v
    if amsgrad:
        v_used = np.maximum(_f64(state["max_exp_avg_sq"]), v)
        new_state["max_exp_avg_sq"] = v_used
    bc1 = 1.0 - beta1**t
    bc2 = 1.0 - beta2**t
    p = p - (lr / bc1) * m / (np.sqrt(v_used) / np.sqrt(bc2) + eps)
    return _out(p, new_state)


# --------------------------------------------------------------------------- Yogi


def yogi_init(param, *, initial_accumulator: float = 1e-6) -> dict:
    """Both of Yogi's moments start at ``initial_accumulator``."""
    shape = np.shape(param)
    return {
        "exp_avg": np.full(shape, float(initial_accumulator)),
        "exp_avg_sq": np.full(shape, float(initial_accumulator)),
    }


def yogi_step(
    param,
    grad,
    state: dict,
    t: int,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float = 0.0,
    maximize: bool = False,
    decoupled: bool = False,
):
    """Yogi (Zaheer et al., NeurIPS 2018), bias-corrected as Adam.

    m = b1 m + (1-b1) g;  v = v - (1-b2) sign(v - g^2) g^2
    param -= lr / (1-b1^t) * m / (sqrt(v) / sqrt(1-b2^t) + eps)
    """
    p, g = _prepare(param, grad, lr=lr, weight_decay=weight_decay, maximize=maximize, decoupled=decoupled)
    g2 = g * g
    m = beta1 * _f64(state["exp_avg"]) + (1.0 - beta1) * g
    v_prev = _f64(state["exp_avg_sq"])
    v = v_prev - (1.0 - beta2) * np.sign(v_prev - g2) * g2
    bc1 = 1.0 - beta1**t
    bc2 = 1.0 - beta2**t
    p = p - (lr / bc1) * m / (np.sqrt(v) / np.sqrt(bc2) + eps)
    return _out(p, {"exp_avg": m, "exp_avg_sq": v})


def yogi_v_d2l(v_prev, g, beta2: float):
    """Yogi's second moment as Dive into Deep Learning writes it (g already preprocessed):

    s_t = s_{t-1} + (1 - b2) g^2 sgn(g^2 - s_{t-1})
    """
    v_prev = _f64(v_prev)
    g2 = _f64(g) ** 2
    return np.asarray(v_prev + (1.0 - beta2) * g2 * np.sign(g2 - v_prev))


# --------------------------------------------------------------------------- SGD


def sgd_init(param) -> dict:
    """SGD has no state before its first step (the buffer is created from the gradient)."""
    return {}


def sgd_step(
    param,
    grad,
    state: dict,
    t: int,
    *,
    lr: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    maximize: bool = False,
):
    """SGD with momentum (torch's / Sutskever et al. form), dampening and Nesterov.

    buf = g on the first step, else buf = mu buf + (1-tau) g
    d = g + mu buf if nesterov else buf   (mu == 0: d = g, no buffer)
    param -= lr d
    """
    p, g = _prepare(param, grad, lr=lr, weight_decay=weight_decay, maximize=maximize, decoupled=False)
    new_state = {}
    d = g
    if momentum != 0:
        if "momentum_buffer" not in state:
            buf = g.copy()
        else:
            buf = momentum * _f64(state["momentum_buffer"]) + (1.0 - dampening) * g
        new_state["momentum_buffer"] = buf
        d = g + momentum * buf if nesterov else buf
    p = p - lr * d
    return _out(p, new_state)


# --------------------------------------------------------------------------- RMSprop


def rmsprop_init(param, *, momentum: float = 0.0, centered: bool = False) -> dict:
    shape = np.shape(param)
    state = {"square_avg": np.zeros(shape)}
    if momentum > 0:
        state["momentum_buffer"] = np.zeros(shape)
    if centered:
        state["grad_avg"] = np.zeros(shape)
    return state


def rmsprop_step(
    param,
    grad,
    state: dict,
    t: int,
    *,
    lr: float,
    alpha: float,
    eps: float,
    momentum: float = 0.0,
    centered: bool = False,
    weight_decay: float = 0.0,
    maximize: bool = False,
):
    """RMSprop (Hinton's lecture 6e; centered form of Graves, 2013), torch's conventions.

    s = alpha s + (1-alpha) g^2
    centered: a = alpha a + (1-alpha) g, denom = sqrt(s - a^2) + eps; else sqrt(s) + eps
    momentum > 0: b = momentum b + g / denom, param -= lr b; else param -= lr g / denom
    """
    p, g = _prepare(param, grad, lr=lr, weight_decay=weight_decay, maximize=maximize, decoupled=False)
    s = alpha * _f64(state["square_avg"]) + (1.0 - alpha) * g * g
    new_state = {"square_avg": s}
    if centered:
        a = alpha * _f64(state["grad_avg"]) + (1.0 - alpha) * g
        new_state["grad_avg"] = a
        denom = np.sqrt(s - a * a) + eps
    else:
        denom = np.sqrt(s) + eps
    if momentum > 0:
        b = momentum * _f64(state["momentum_buffer"]) + g / denom
        new_state["momentum_buffer"] = b
        p = p - lr * b
    else:
        p = p - lr * g / denom
    return _out(p, new_state)


# --------------------------------------------------------------------------- Adagrad


def adagrad_init(param, *, initial_accumulator_value: float = 0.0) -> dict:
    return {"sum": np.full(np.shape(param), float(initial_accumulator_value))}


def adagrad_step(
    param,
    grad,
    state: dict,
    t: int,
    *,
    lr: float,
    lr_decay: float = 0.0,
    eps: float = 1e-10,
    weight_decay: float = 0.0,
    maximize: bool = False,
):
    """Adagrad (Duchi et al., 2011) with torch's learning-rate decay.

    clr = lr / (1 + (t-1) lr_decay);  sum = sum + g^2;  param -= clr g / (sqrt(sum) + eps)
    """
    p, g = _prepare(param, grad, lr=lr, weight_decay=weight_decay, maximize=maximize, decoupled=False)
    clr = lr / (1.0 + (t - 1) * lr_decay)
    total = _f64(state["sum"]) + g * g
    p = p - clr * g / (np.sqrt(total) + eps)
    return _out(p, {"sum": total})


# --------------------------------------------------------------------------- Lion, ADOPT, AdEMAMix, Adan
# State starts at zero for each; ``state`` holds the arrays by torch-style name.


def lion_step(param, grad, state: dict, t: int, *, lr, beta1, beta2, weight_decay=0.0, maximize=False):
    """Lion (Chen et al., 2023, Algorithm 2): decoupled decay, then
    param -= lr * sign(b1 m + (1-b1) g);  m = b2 m + (1-b2) g."""
    p, g = _prepare(param, grad, lr=lr, weight_decay=weight_decay, maximize=maximize, decoupled=True)
    m = _f64(state["exp_avg"])
    p = p - lr * np.sign(beta1 * m + (1.0 - beta1) * g)
    return _out(p, {"exp_avg": beta2 * m + (1.0 - beta2) * g})


def adopt_step(param, grad, state: dict, t: int, *, lr, beta1, beta2, eps, clip_exponent=0.25,
               weight_decay=0.0, decoupled=False, maximize=False):
    """ADOPT (Taniguchi et al., 2024, Algorithm 2 with clipping): v_0 = g_0^2; then
    m = b1 m + (1-b1) clip(g / max(sqrt(v), eps), t^c);  param -= lr m;  v = b2 v + (1-b2) g^2."""
    p, g = _prepare(param, grad, lr=lr, weight_decay=weight_decay, maximize=maximize, decoupled=decoupled)
    m, v = _f64(state["exp_avg"]), _f64(state["exp_avg_sq"])
    if t == 1:
        return _out(p, {"exp_avg": m, "exp_avg_sq": v + g * g})
    normalized = g / np.maximum(np.sqrt(v), eps)
    if clip_exponent is not None:
        normalized = np.clip(normalized, -(t**clip_exponent), t**clip_exponent)
    m = beta1 * m + (1.0 - beta1) * normalized
    return _out(p - lr * m, {"exp_avg": m, "exp_avg_sq": beta2 * v + (1.0 - beta2) * g * g})


def ademamix_step(param, grad, state: dict, t: int, *, lr, beta1, beta2, beta3, alpha, eps, t_alpha_beta3=None,
                  weight_decay=0.0, decoupled=True, maximize=False):
    """AdEMAMix (Pagliardini et al., 2024, Algorithm 1, with its alpha and beta3 schedulers):
    m1 = b1 m1 + (1-b1) g;  m2 = b3_t m2 + (1-b3_t) g;  v = b2 v + (1-b2) g^2;
    param -= lr (m1 / (1-b1^t) + alpha_t m2) / (sqrt(v / (1-b2^t)) + eps)."""
    if t_alpha_beta3 is not None:
        s = t / t_alpha_beta3
        half_life = (1 - s) * np.log(0.5) / np.log(beta1) + s * np.log(0.5) / np.log(beta3)
        beta3 = min(0.5 ** (1.0 / half_life), beta3)
        alpha = min(t * alpha / t_alpha_beta3, alpha)
    p, g = _prepare(param, grad, lr=lr, weight_decay=weight_decay, maximize=maximize, decoupled=decoupled)
    m1 = beta1 * _f64(state["exp_avg"]) + (1.0 - beta1) * g
    m2 = beta3 * _f64(state["exp_avg_slow"]) + (1.0 - beta3) * g
    v = beta2 * _f64(state["exp_avg_sq"]) + (1.0 - beta2) * g * g
    p = p - lr * (m1 / (1.0 - beta1**t) + alpha * m2) / (np.sqrt(v / (1.0 - beta2**t)) + eps)
    return _out(p, {"exp_avg": m1, "exp_avg_sq": v, "exp_avg_slow": m2})


def adan_step(param, grad, state: dict, t: int, *, lr, beta1, beta2, beta3, eps, weight_decay=0.0, no_prox=False):
    """Adan (Xie et al., 2022, Algorithm 1, the betas as 1 minus the paper's, bias-corrected
    as the authors' code): d = g - g_prev (0 at step 1);  m = b1 m + (1-b1) g;
    a = b2 a + (1-b2) d;  n = b3 n + (1-b3) (g + b2 d)^2;
    param = (param - lr (m/(1-b1^t) + b2 a/(1-b2^t)) / (sqrt(n/(1-b3^t)) + eps)) / (1 + lr wd)
    (with no_prox, param (1 - lr wd) in place of the division)."""
    p, g = _f64(param), _f64(grad)
    d = np.zeros_like(g) if t == 1 else g - _f64(state["previous_grad"])
    m = beta1 * _f64(state["exp_avg"]) + (1.0 - beta1) * g
    a = beta2 * _f64(state["exp_avg_diff"]) + (1.0 - beta2) * d
    n = beta3 * _f64(state["exp_avg_sq"]) + (1.0 - beta3) * (g + beta2 * d) ** 2
    step = lr * (m / (1.0 - beta1**t) + beta2 * a / (1.0 - beta2**t)) / (np.sqrt(n / (1.0 - beta3**t)) + eps)
    if no_prox:
        p = p * (1.0 - lr * weight_decay) - step
    else:
        p = (p - step) / (1.0 + lr * weight_decay)
    return _out(p, {"exp_avg": m, "exp_avg_diff": a, "exp_avg_sq": n, "previous_grad": g})


def schedule_free_adamw_step(param, grad, state: dict, t: int, *, lr, beta1, beta2, eps, weight_decay=0.0,
                             warmup_steps=0, r=0.0, weight_lr_power=2.0):
    """Schedule-Free AdamW (Defazio et al., 2024, Algorithm 1) with x and z explicit; the
    parameter is y = (1 - b1) z + b1 x, the gradient taken there. ``state`` holds x, z, v
    and the running lr_max and weight sum (x = z = the parameter before step 1).
    n = g / (sqrt(v / (1 - b2^t)) + eps) + wd y;  z -= lr_t n;
    c = w_t / sum w;  x = (1 - c) x + c z;  w_t = t^r lr_max^p, lr_t warmed up over warmup_steps."""
    y, g = _f64(param), _f64(grad)
    x = _f64(state["x"]) if "x" in state else y.copy()
    z = _f64(state["z"]) if "z" in state else y.copy()
    lr_t = lr * min(1.0, t / warmup_steps) if warmup_steps else lr
    lr_max = max(lr_t, float(state.get("lr_max", -1.0)))
    weight = t**r * lr_max**weight_lr_power
    weight_sum = float(state.get("weight_sum", 0.0)) + weight
    v = beta2 * _f64(state.get("exp_avg_sq", np.zeros_like(y))) + (1.0 - beta2) * g * g
    n = g / (np.sqrt(v / (1.0 - beta2**t)) + eps) + weight_decay * y
    z = z - lr_t * n
    c = weight / weight_sum
    x = (1.0 - c) * x + c * z
    y = (1.0 - beta1) * z + beta1 * x
    return _out(y, {"x": x, "z": z, "exp_avg_sq": v, "lr_max": lr_max, "weight_sum": weight_sum})
