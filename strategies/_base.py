"""The strategy contract: a named class with declared parameters and one ``__call__``."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

Info = dict[str, float]

# An int parameter without its own upper bound still fits in 64 bits (torch, the result tables).
INT_MAX = 2**63 - 1


@dataclass(frozen=True)
class Param:
    """A declared strategy parameter: its default (which fixes its type) and its valid range.

    Declare an upper bound (``le``) on every size (steps, iterations): an absurd value is then
    refused when the suite is loaded, with the accepted range. An int parameter without one is
    still bounded by ``INT_MAX`` (2^63 - 1)."""

    default: int | float | str | bool
    ge: float | None = None  # inclusive lower bound
    gt: float | None = None  # exclusive lower bound
    le: float | None = None  # inclusive upper bound
    choices: tuple | None = None
    doc: str = ""

    @property
    def type(self) -> type:
        return type(self.default)

    @property
    def upper(self) -> float | None:
        """The inclusive upper bound: ``le``, or ``INT_MAX`` for an int without one."""
        return INT_MAX if self.le is None and self.type is int else self.le

    def describe(self) -> str:
        rule = self.type.__name__
        for op, bound in ((">=", self.ge), (">", self.gt), ("<=", self.upper)):
            if bound is not None:
                rule += f" {op} {bound if isinstance(bound, int) else format(bound, 'g')}"
        if self.choices:
            rule += " in {" + ", ".join(map(str, self.choices)) + "}"
        return f"{rule}, default {self.default!r}"

    def check(self, value: Any) -> Any:
        """Return ``value`` converted to this parameter's type, or raise ValueError (a str)."""
        kind = self.type
        if kind is bool:
            ok = isinstance(value, bool)
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            ok = ok and math.isfinite(value)
            value = float(value) if ok else value
        else:
            ok = isinstance(value, kind)
        if not ok:
            raise ValueError(f"expected {kind.__name__}, got {value!r}")
        if (
            (self.ge is not None and value < self.ge)
            or (self.gt is not None and value <= self.gt)
            or (self.upper is not None and value > self.upper)
            or (self.choices and value not in self.choices)
        ):
            raise ValueError(f"{value!r} is out of range ({self.describe()})")
        return value

    def parse(self, text: str) -> Any:
        """Convert a command-line string (``"10"``, ``"1e-6"``, ``"true"``) to this type."""
        kind = self.type
        try:
            if kind is bool:
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                return text.lower() in ("true", "1")
            if kind is int:
                return int(text)
            return kind(text)
        except ValueError:
            raise ValueError(f"expected {kind.__name__}, got {text!r}") from None


@dataclass(frozen=True)
class WeightedOutputs:
    """Several outputs of one forward pass, each with the weight of its loss in training.

    ``weighted_loss(out, loss_fn)`` is ``sum_i weights[i] * loss_fn(outputs[i])``; the last
    output is the reconstruction (``final``), the one evaluated and measured.
    """

    outputs: tuple[torch.Tensor, ...]
    weights: tuple[float, ...]

    def __post_init__(self):
        if not self.outputs or len(self.outputs) != len(self.weights):
            raise ValueError(
                f"WeightedOutputs needs as many weights as outputs (at least one), got "
                f"{len(self.outputs)} outputs and {len(self.weights)} weights"
            )

    @property
    def final(self) -> torch.Tensor:
        return self.outputs[-1]


def final_output(out: torch.Tensor | WeightedOutputs) -> torch.Tensor:
    """The reconstruction a strategy returned: ``out`` itself, or a WeightedOutputs' last."""
    return out.final if isinstance(out, WeightedOutputs) else out


def weighted_loss(
    out: torch.Tensor | WeightedOutputs, loss_fn: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """The training loss of a strategy's output: ``loss_fn(out)``, or for WeightedOutputs the
    weighted sum of each output's loss."""
    if not isinstance(out, WeightedOutputs):
        return loss_fn(out)
    return sum(w * loss_fn(z) for w, z in zip(out.weights, out.outputs, strict=True))


class Strategy:
    """Base class of gradient strategies.

    A subclass declares ``name`` and ``parameters`` (name -> :class:`Param`) and implements
    ``__call__(f, z0, solver) -> (z, info)``:

    - ``f``: callable z -> T(z), differentiable in z and in the parameters it captures;
    - ``z0``: the initial iterate (no grad);
    - ``solver``: callable ``solver(f, z0) -> (z_star, info)`` that builds no graph.

    It returns ``z`` attached to the autograd graph, so that ``loss(z).backward()`` leaves the
    strategy's gradient in the parameters' ``.grad``, and ``info`` (str -> number), which
    strategies with a backward solve complete during ``backward()``.

    A strategy whose loss is on several states (fixed-point correction) returns a
    :class:`WeightedOutputs` instead of ``z``: the training loss is then ``sum_i w_i loss(z_i)``
    and the reconstruction its last output. Callers go through :func:`weighted_loss` and
    :func:`final_output`, which take either form, so a strategy returning one tensor is unchanged.

    Validated parameter values are available as attributes (``self.k``) and in ``self.params``.

    Two optional declarations let the harness treat a strategy correctly:

    - ``exact = True``: the gradient is the implicit-function-theorem gradient up to the
      strategy's own tolerance; the conformance tests then hold it to the dense-Jacobian
      gradient (1e-6 relative at a tight tolerance), not just to a descent direction.
    - ``cost_params = ("k",)``: the parameters that set the cost of a step; the report draws a
      scaling figure (time, memory, quality against the value) for each.
    - ``has_adjoint = False``: the gradient is not v^T df/dtheta at a fixed point for some
      adjoint v (unrolled backprop of k layers from z0), so the harness records no certified
      bound on its adjoint error (``adjoint_error_bound`` NaN; see :mod:`bench.bounds`, which
      reads v for every other strategy, with nothing for the strategy to report).
    """

    name: ClassVar[str] = ""
    parameters: ClassVar[dict[str, Param]] = {}
    exact: ClassVar[bool] = False
    has_adjoint: ClassVar[bool] = True
    cost_params: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **params: Any):
        unknown = sorted(set(params) - set(self.parameters))
        if unknown:
            raise ValueError(
                f"strategy {self.name!r}: unknown parameter(s) {', '.join(unknown)}; "
                f"accepted: {self.accepted()}"
            )
        self.params: dict[str, Any] = {}
        for key, spec in self.parameters.items():
            try:
                value = spec.check(params.get(key, spec.default))
            except ValueError as err:
                raise ValueError(
                    f"strategy {self.name!r}: bad value for {key}: {err}; "
                    f"accepted: {self.accepted()}"
                ) from None
            self.params[key] = value
            setattr(self, key, value)

    @classmethod
    def accepted(cls) -> str:
        if not cls.parameters:
            return "no parameters"
        return "; ".join(f"{k} ({p.describe()})" for k, p in cls.parameters.items())

    @property
    def label(self) -> str:
        """``name:key=value:...`` — the form the command line accepts (every parameter)."""
        return ":".join([self.name] + [f"{k}={v}" for k, v in self.params.items()])

    @property
    def short_label(self) -> str:
        """``name:key=value`` with only the parameters that differ from their defaults: the
        label of figures and tables, short enough for a legend."""
        changed = [f"{k}={v}" for k, v in self.params.items() if v != self.parameters[k].default]
        return ":".join([self.name, *changed])

    def __call__(self, f, z0: torch.Tensor, solver) -> tuple[torch.Tensor, Info]:
        raise NotImplementedError

    @staticmethod
    def fixed_point(f, z0: torch.Tensor, solver) -> tuple[torch.Tensor, Info]:
        """Solve z = f(z) from ``z0`` without building a graph: ``(z*, info)``, z* detached and
        ``info`` a copy the strategy may extend. The solver the harness passes records the
        forward solve's statistics itself, so a strategy neither reports nor can invent them."""
        with torch.no_grad():
            z_star, info = solver(f, z0)
        return z_star.detach(), dict(info)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{self.name}({args})"
