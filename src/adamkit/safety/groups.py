"""Build torch-style parameter groups from modules: no decay for biases and norms, lr by prefix."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import Tensor, nn

# Normalization layers found by type, so custom names ("ln_f", "post_attention_layernorm")
# need no list of spellings. _NormBase covers BatchNorm*, InstanceNorm* and SyncBatchNorm.
NORM_TYPES: tuple[type, ...] = tuple(
    t
    for t in (
        nn.modules.batchnorm._NormBase,
        nn.LayerNorm,
        nn.GroupNorm,
        nn.LocalResponseNorm,
        getattr(nn, "RMSNorm", None),
    )
    if t is not None
)
EMBEDDING_TYPES: tuple[type, ...] = (nn.Embedding, nn.EmbeddingBag)
CATEGORIES = ("bias", "norm", "embedding")


def _named_params_with_categories(source, prefix: str):
    """Yield (name, param, categories) for a module or an iterable of (name, param)."""
    if isinstance(source, nn.Module):
        for module_name, module in source.named_modules():
            for param_name, param in module.named_parameters(recurse=False):
                name = ".".join(part for part in (prefix, module_name, param_name) if part)
                categories = set()
                if param_name == "bias":
                    categories.add("bias")
                if isinstance(module, NORM_TYPES):
                    categories.add("norm")
                if isinstance(module, EMBEDDING_TYPES):
                    categories.add("embedding")
                yield name, param, categories
        return
    for name, param in source:
        if not isinstance(param, Tensor):
            raise TypeError(
                f"expected (name, parameter) pairs, got ({name!r}, {type(param).__name__}); "
                "pass a module, module.named_parameters(), or (name, module) pairs"
            )
        full = f"{prefix}.{name}" if prefix else name
        yield full, param, {"bias"} if name.split(".")[-1] == "bias" else set()


def _sources(models_or_named_params) -> list[tuple[str, object]]:
    """(prefix, source) pairs; several unnamed models get prefixes "0.", "1.", ..."""
    pairs: list[tuple[str, object]] = []
    for item in models_or_named_params:
        if isinstance(item, Mapping):
            pairs.extend(item.items())
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], nn.Module):
            pairs.append(item)
        else:
            pairs.append(("", item))
    unnamed = [i for i, (prefix, _) in enumerate(pairs) if not prefix]
    if len(pairs) > 1:
        for i in unnamed:
            pairs[i] = (str(i), pairs[i][1])
    return pairs


def _lr_for(name: str, lr: Mapping[str, float], used: set[str]) -> float | None:
    matches = [prefix for prefix in lr if name == prefix or name.startswith(prefix + ".")]
    if not matches:
        return None
    prefix = max(matches, key=len)  # the most specific prefix wins
    used.add(prefix)
    return lr[prefix]


def param_groups(
    *models_or_named_params,
    weight_decay: float = 1e-2,
    no_decay: Iterable[str] = ("bias", "norm"),
    lr: float | Mapping[str, float] | None = None,
) -> list[dict]:
    """Parameter groups for any torch optimizer, every trainable parameter exactly once.

    Sources are modules, ``(name, module)`` pairs, ``{name: module}`` mappings or
    iterables of ``(name, parameter)`` (e.g. ``model.named_parameters()``); several at
    once combine models (an actor and a critic). Parameters in ``no_decay`` categories
    get ``weight_decay=0``: ``"bias"`` (parameters named ``bias``), ``"norm"``
    (parameters of normalization layers, found by module type: LayerNorm, BatchNorm,
    GroupNorm, RMSNorm, InstanceNorm, ...) and ``"embedding"`` (Embedding layers).
    ``lr`` is one learning rate for all groups, or ``{name_prefix: lr}`` where the
    longest matching prefix wins and other parameters keep the optimizer's default.
    Parameters with ``requires_grad=False`` are left out; a parameter shared by two
    modules appears once, under its first name. Each group carries ``param_names``.

    >>> import torch, adamkit
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    >>> groups = adamkit.param_groups(model, weight_decay=0.1, lr={"0": 0.01})
    >>> [(g["param_names"], g["weight_decay"], g.get("lr")) for g in groups]
    [(['0.weight'], 0.1, 0.01), (['0.bias'], 0.0, 0.01), (['1.weight', '1.bias'], 0.0, None)]
    >>> optimizer = adamkit.AdamW(groups, lr=1e-3)
    """
    no_decay = set(no_decay)
    unknown = no_decay - set(CATEGORIES)
    if unknown:
        raise ValueError(f"unknown no_decay categories {sorted(unknown)}; choose from {list(CATEGORIES)}")
    if not models_or_named_params:
        raise ValueError("param_groups needs at least one model or iterable of named parameters")
    lr_by_prefix = lr if isinstance(lr, Mapping) else {}
    used_prefixes: set[str] = set()
    seen: set[int] = set()
    groups: dict[tuple[bool, float | None], dict] = {}
    for prefix, source in _sources(models_or_named_params):
        for name, param, categories in _named_params_with_categories(source, prefix):
            if id(param) in seen or not param.requires_grad:
                continue
            seen.add(id(param))
            decays = not (categories & no_decay)
            group_lr = _lr_for(name, lr_by_prefix, used_prefixes) if lr_by_prefix else lr
            group = groups.setdefault(
                (decays, group_lr),
                {"params": [], "param_names": [], "weight_decay": weight_decay if decays else 0.0},
            )
            if group_lr is not None:
                group["lr"] = group_lr
            group["params"].append(param)
            group["param_names"].append(name)
    unused = [prefix for prefix in lr_by_prefix if prefix not in used_prefixes]
    if unused:
        raise ValueError(
            f"lr prefix {unused[0]!r} matches no parameter name; names start with: "
            f"{sorted({n.split('.')[0] for g in groups.values() for n in g['param_names']})}"
        )
    if not groups:
        raise ValueError("no trainable parameters found (all have requires_grad=False?)")
    return list(groups.values())
