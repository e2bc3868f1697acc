"""A LoRA stack applied to a loaded expert in place, and changed later without loading the expert again.

Full-precision weights (fp32 / bf16 / fp16) get the delta merged in: W <- round(W + sum of strength * delta), in
float32 and rounded once, one parameter at a time (peak memory: the expert plus one parameter's delta; never a
second copy). Quantised Linears (fp8, or any with `dequantized_weight`) get run-time terms instead (see `runtime`).

The state (`model.lora_state`) records what each parameter carries, so a new stack is reached from the current one:
  * a strength changed or a LoRA added: the difference is merged in place (no file read). The result equals a fresh
    merge up to one more rounding of the weight; after EXACT_AFTER such changes a parameter is rebuilt exactly;
  * a LoRA removed (or its strength set to 0): the parameter is restored exactly, then the remaining LoRAs merged.
    Small parameters (norms, biases, modulation) are restored from a copy kept in RAM when first changed; large
    weights are re-read from the expert's file (only those tensors), bit for bit as the loader made them;
  * run-time terms are added, re-weighted or removed; the stored weights never change.
Every LoRA file is read and checked against the expert's shapes before the first weight changes.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from ..dit.loader import read_weights
from ..dit.model import DiTConfig
from ..io.checkpoint import Checkpoint
from .delta import CHUNK_ELEMENTS, delta, low_rank, rows_of
from .files import LoraFile, Patch, read_lora
from .keys import expert_names
from .runtime import DenseTerm, LowRankTerm, is_quantised, set_term, term_of

log = logging.getLogger("wan_core.lora")

LoraStack = Sequence[tuple[str, float]]  # (LoRA file, strength), in order; strength 0 applies nothing
EXACT_AFTER = 4  # in-place strength changes of a parameter before it is rebuilt from its exact value
_FULL_PRECISION = (torch.float32, torch.bfloat16, torch.float16)
Contributions = dict[tuple, float]  # LoRA file identity -> strength


@dataclass
class LoraState:
    """What the LoRAs of one loaded expert changed: per parameter, which files at which strengths."""

    base_path: str
    weight_dtype: str
    merged: dict[str, Contributions] = field(default_factory=dict)
    runtime: dict[str, Contributions] = field(default_factory=dict)
    drift: dict[str, int] = field(default_factory=dict)  # in-place changes since the parameter was exact
    backups: dict[str, torch.Tensor] = field(default_factory=dict)  # original small parameters (CPU)


def lora_state(model: nn.Module) -> LoraState | None:
    """The LoRA state of an expert, or None when no LoRA was ever applied to it."""
    return model.__dict__.get("lora_state")


def _files(stack: LoraStack, config: DiTConfig) -> dict[tuple, tuple[LoraFile, float]]:
    """identity -> (checked file, summed strength) of the stack's LoRAs with a non-zero strength."""
    out: dict[tuple, tuple[LoraFile, float]] = {}
    for path, strength in stack:
        lora = read_lora(path, config)
        total = out.get(lora.identity, (lora, 0.0))[1] + float(strength)
        out[lora.identity] = (lora, total)
    return {k: v for k, v in out.items() if v[1] != 0.0}


def runtime_bytes(stack: LoraStack, config: DiTConfig, itemsize: int) -> int:
    """Bytes the stack's run-time terms take when every Linear it patches is quantised (an upper bound)."""
    shapes, total = expert_names(config).shapes, 0
    for lora, _ in _files(stack, config).values():
        infos = lora.open().infos
        for patch in lora.patches:
            if patch.family == "lora":
                total += sum(_numel(infos[k].shape) for _, k in patch.roles) * itemsize
            elif len(shapes[patch.target]) == 2:
                total += _numel(shapes[patch.target]) * itemsize
    return total


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def apply_stack(model: nn.Module, stack: LoraStack, *, base_path: str | Path, weight_dtype: str = "auto",
                work_device: torch.device | str | None = None) -> LoraState:
    """Make `model` carry exactly the LoRAs of `stack` (from whatever it carries now); see the module docstring.

    `base_path`/`weight_dtype`: how the expert was loaded (large weights are restored from there). `work_device`:
    where deltas are computed (default: where each weight is).
    """
    files = _files(stack, model.config)
    wanted: dict[str, list[tuple[tuple, Patch, float]]] = {}
    for identity, (lora, strength) in files.items():
        for patch in lora.patches:
            wanted.setdefault(patch.target, []).append((identity, patch, strength))
    state = lora_state(model) or LoraState(str(base_path), weight_dtype)
    opened = {identity: lora.open() for identity, (lora, _) in files.items()}
    targets = sorted(set(wanted) | set(state.merged) | set(state.runtime))
    runtime = {t for t in targets if _is_runtime(model, t)}
    _check_full_precision(model, [t for t in targets if t not in runtime], base_path)
    for target in sorted(runtime):
        _update_runtime(model, state, target, wanted.get(target, []), opened)
    exact, changed = _plan_merges(state, [t for t in targets if t not in runtime], wanted)
    _keep_backups(model, state, changed + exact)
    work = torch.device(work_device) if work_device is not None else None
    for target in changed:
        _merge(model.get_parameter(target).data, _differences(state, target, wanted), opened, work)
        state.drift[target] = state.drift.get(target, 0) + int(bool(state.merged.get(target)))
        _record(state, target, wanted)
    _restore_and_merge(model, state, exact, wanted, opened, work)
    model.lora_state = state
    getattr(model, "forget_text", lambda: None)()  # text keys/values kept from the old weights are stale
    log.info("LoRA on %s: %s; %d parameters merged, %d run-time terms", Path(base_path).name,
             ", ".join(f"{lora.name} x{s:g}" for lora, s in files.values()) or "none",
             len(state.merged), sum(len(v) for v in state.runtime.values()))
    return state


def _is_runtime(model: nn.Module, target: str) -> bool:
    owner, _, leaf = target.rpartition(".")
    return leaf == "weight" and is_quantised(model.get_submodule(owner))


def _check_full_precision(model: nn.Module, targets: list[str], base_path: str | Path) -> None:
    for target in targets:
        dtype = model.get_parameter(target).dtype
        if dtype not in _FULL_PRECISION:
            raise ValueError(f"{Path(base_path).name}: '{target}' is stored as {dtype}, which a LoRA cannot be merged "
                             "into and which is not a quantised Linear; load the expert with weight_dtype bf16.")


def _plan_merges(state: LoraState, targets: list[str], wanted: dict) -> tuple[list[str], list[str]]:
    """(parameters to restore exactly and merge, parameters to change in place by the strength differences)."""
    exact, changed = [], []
    for target in targets:
        have, want = state.merged.get(target, {}), {i: s for i, _, s in wanted.get(target, [])}
        if have == want:
            continue
        removed = any(identity not in want for identity in have)
        (exact if removed or state.drift.get(target, 0) >= EXACT_AFTER else changed).append(target)
    return exact, changed


def _differences(state: LoraState, target: str, wanted: dict) -> list[tuple[tuple, Patch, float]]:
    have = state.merged.get(target, {})
    return [(i, p, s - have.get(i, 0.0)) for i, p, s in wanted.get(target, []) if s != have.get(i, 0.0)]


def _record(state: LoraState, target: str, wanted: dict) -> None:
    want = {i: s for i, _, s in wanted.get(target, [])}
    if want:
        state.merged[target] = want
    else:
        state.merged.pop(target, None)


def _merge(weight: torch.Tensor, changes: list[tuple[tuple, Patch, float]], opened: dict[tuple, Checkpoint],
           work: torch.device | None) -> None:
    """weight <- round(weight + sum of strength * delta), summed and added in float32 and rounded once, a block of
    rows at a time (float32 weights in place; others through one 4 MiB buffer): no weight-sized temporary."""
    if not changes:
        return
    device = work or weight.device
    adders = [rows_of(patch, opened[identity], tuple(weight.shape), device, strength)
              for identity, patch, strength in changes]
    flat = weight.view(weight.shape[0], -1)
    step = max(1, CHUNK_ELEMENTS // flat.shape[1])
    in_place = weight.dtype == torch.float32 and weight.device == device
    size = min(flat.shape[0], step) * flat.shape[1]
    buffer = None if in_place else torch.empty(size, dtype=torch.float32, device=device)
    scratch = [torch.empty(size, dtype=torch.float32, device=device) for _ in range(2)] \
        if any(a.family == "loha" for a in adders) else []
    for start in range(0, flat.shape[0], step):
        rows = flat[start:start + step]
        acc = rows if in_place else buffer[: rows.numel()].view(rows.shape).copy_(rows)
        for adder in adders:
            adder.add_to(acc, start, scratch)
        if acc is not rows:
            rows.copy_(acc)


def _small(weight: torch.Tensor, target: str) -> bool:
    """Norms, biases and modulation tables: kept as a RAM copy when first changed (they are a tiny part)."""
    return weight.dim() < 2 or target.endswith("modulation")


def _restore_and_merge(model: nn.Module, state: LoraState, exact: list[str], wanted: dict,
                       opened: dict[tuple, Checkpoint], work: torch.device | None) -> None:
    """Restore each parameter of `exact` to its loaded value (RAM copy, else the expert's file), then merge `wanted`."""
    from_file = [t for t in exact if t not in state.backups]
    for target in exact:
        if target in state.backups:
            model.get_parameter(target).data.copy_(state.backups[target])
    if from_file:
        device = model.get_parameter(from_file[0]).device
        for target, original in read_weights(state.base_path, from_file, device=device, weight_dtype=state.weight_dtype,
                                             compute_dtype=model.compute_dtype):
            model.get_parameter(target).data.copy_(original)
            del original
    for target in exact:
        state.merged.pop(target, None)
        state.drift[target] = 0
        _merge(model.get_parameter(target).data, _differences(state, target, wanted), opened, work)
        _record(state, target, wanted)


def _keep_backups(model: nn.Module, state: LoraState, targets: list[str]) -> None:
    for target in targets:
        weight = model.get_parameter(target).data
        if target not in state.backups and not state.merged.get(target) and _small(weight, target):
            state.backups[target] = weight.detach().to("cpu", copy=True)


def _term_prefix(identity: tuple) -> str:
    return f"lora_{hashlib.sha1(repr(identity).encode()).hexdigest()[:12]}_"


def _update_runtime(model: nn.Module, state: LoraState, target: str, wanted: list[tuple[tuple, Patch, float]],
                    opened: dict[tuple, Checkpoint]) -> None:
    """Give a quantised Linear exactly the run-time terms of `wanted` (added, re-weighted or removed)."""
    layer = model.get_submodule(target.rpartition(".")[0])
    want = {i: s for i, _, s in wanted}
    for identity in state.runtime.get(target, {}):
        if identity not in want:
            for name in [n for n in getattr(layer, "lora_terms", {}) if n.startswith(_term_prefix(identity))]:
                set_term(layer, name, None)
    device = next(iter(layer.state_dict().values())).device
    counts: dict[tuple, int] = {}
    for identity, patch, strength in wanted:
        counts[identity] = counts.get(identity, -1) + 1
        name = _term_prefix(identity) + str(counts[identity])
        term = term_of(layer, name)
        if term is None:
            term = _new_term(layer, patch, opened[identity], device)
            set_term(layer, name, term)
        term.strength = strength
    if want:
        state.runtime[target] = want
    else:
        state.runtime.pop(target, None)


def _new_term(layer: nn.Module, patch: Patch, ckpt: Checkpoint, device: torch.device) -> nn.Module:
    """The run-time term of one patch, in the layer's compute dtype (strength set by the caller)."""
    dtype = layer.compute_dtype
    if patch.family == "lora":
        down, up, scale = low_rank(patch, ckpt, device)
        return LowRankTerm(down.to(dtype), up.to(dtype), scale)
    return DenseTerm(delta(patch, ckpt, (layer.out_features, layer.in_features), device).to(dtype))
