"""Activations understood by the fault-tolerance analysis: Lipschitz constant K and output range.

Every bound of El Mhamdi & Guerraoui, *When Neurons Fail* (IPDPS 2017), needs two numbers per layer:
the Lipschitz constant ``K`` of the activation φ and the largest value ``C`` a neuron can transmit
(|φ| ≤ C). :func:`activation_info` reads both from a PyTorch module.

Ranges are intervals ``[lo, hi]``. Sigmoid, Tanh and :class:`ScaledSigmoid` are intrinsically
bounded. ReLU, LeakyReLU, Softplus and Identity are not: their interval must come from the user
(``C``: |φ| ≤ C) or from the activations observed on data (see
:func:`byzlearn.neurons.network.extract_network`); in that case a bound only holds for inputs whose
fault-free activations stay inside the interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "ActivationInfo",
    "CrashDropout",
    "DeclaredActivation",
    "ScaledSigmoid",
    "activation_info",
]


class ScaledSigmoid(nn.Module):
    """φ(x) = sigmoid(4·K·x): Lipschitz constant exactly K, range (0, 1).

    The activation of El Mhamdi, Guerraoui, Kucharavy & Volodin, *The Probabilistic Fault
    Tolerance of Neural Networks in the Continuous Limit* (arXiv 1902.01686), whose code uses
    sigmoid(4Kx) so that K is a free parameter (sigmoid' ≤ 1/4).
    """

    def __init__(self, K: float = 1.0) -> None:
        super().__init__()
        if not (math.isfinite(K) and K > 0):
            raise ValueError(f"ScaledSigmoid needs a finite K > 0, got {K}")
        self.K = float(K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(4.0 * self.K * x)

    def extra_repr(self) -> str:
        return f"K={self.K}"


class DeclaredActivation(nn.Module):
    """A user-defined elementwise activation with its declared Lipschitz constant and range.

    ``fn`` is any elementwise function of a tensor (a lambda, a torch function, an
    ``nn.Module``); ``K`` its Lipschitz constant; its range ``[-C, C]`` (``C``) or
    ``[lo, hi]`` (either may be infinite; default unbounded, then the analysis takes the range
    observed on data as for ReLU). ``derivative`` (φ', for the Taylor bound b3) defaults to
    autograd. With ``check=True`` (default) the declaration is verified on a grid of 20001
    points in ``[-span, span]``: a slope above K or a value outside the range is a
    ``ValueError`` naming where. Example, the FEP paper's setup (arXiv 1902.01686)::

        DeclaredActivation(lambda z: torch.sigmoid(4 * z), K=1.0, lo=0.0, hi=1.0, name="sig4")
    """

    def __init__(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        K: float,
        C: float | None = None,
        *,
        lo: float | None = None,
        hi: float | None = None,
        derivative: Callable[[torch.Tensor], torch.Tensor] | None = None,
        name: str = "declared",
        check: bool = True,
        span: float = 20.0,
    ) -> None:
        super().__init__()
        if not callable(fn):
            raise TypeError(f"activation {name}: fn must be callable, got {type(fn).__name__}")
        if not (isinstance(K, (int, float)) and math.isfinite(K) and K > 0):
            raise ValueError(f"activation {name}: K must be a finite number > 0, got {K!r}")
        if C is not None and (lo is not None or hi is not None):
            raise ValueError(f"activation {name}: give C (range [-C, C]) or lo/hi, not both")
        if C is not None:
            if not C > 0:
                raise ValueError(f"activation {name}: C must be > 0, got {C!r}")
            lo, hi = -float(C), float(C)
        self.fn = fn
        self.K = float(K)
        self.lo = -math.inf if lo is None else float(lo)
        self.hi = math.inf if hi is None else float(hi)
        if not self.lo < self.hi:
            raise ValueError(f"activation {name}: needs lo < hi, got [{self.lo}, {self.hi}]")
        self.label = str(name)
        self._derivative = derivative
        if check:
            self.verify(span)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        """φ'(z): the given derivative, else autograd of the elementwise function."""
        if self._derivative is not None:
            return self._derivative(z)
        with torch.enable_grad():
            x = z.detach().clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.fn(x).sum(), x)
        return grad

    def verify(self, span: float = 20.0, points: int = 20001) -> None:
        """Check the declared K and range on a grid of ``[-span, span]`` (float64)."""
        z = torch.linspace(-span, span, points, dtype=torch.float64)
        y = self.fn(z)
        if not isinstance(y, torch.Tensor) or y.shape != z.shape:
            raise ValueError(f"activation {self.label}: fn must be elementwise (same shape out)")
        if not bool(torch.isfinite(y).all()):
            raise ValueError(f"activation {self.label}: fn is not finite on [-{span}, {span}]")
        low, high = float(y.min()), float(y.max())
        tol = 1e-9 * max(1.0, abs(low), abs(high))
        if low < self.lo - tol or high > self.hi + tol:
            raise ValueError(
                f"activation {self.label}: declared range [{self.lo:g}, {self.hi:g}] but its "
                f"values reach [{low:.6g}, {high:.6g}]"
            )
        slopes = (y[1:] - y[:-1]).abs() / (z[1:] - z[:-1])
        worst = int(slopes.argmax())
        if float(slopes[worst]) > self.K * (1 + 1e-6):
            raise ValueError(
                f"activation {self.label}: declared K={self.K:g} but its slope reaches "
                f"{float(slopes[worst]):.4g} near z={round(float(z[worst]), 4) + 0.0:g}"
            )

    def extra_repr(self) -> str:
        return f"name={self.label}, K={self.K}, range=[{self.lo}, {self.hi}]"


class CrashDropout(nn.Module):
    """Training-time crashes: zero each unit with probability ``p``, **without** rescaling.

    This is the failure model of arXiv 1902.01686 (``IndependentCrashes``: dropout whose 1/(1 − p)
    rescaling is undone). It is the identity in ``eval()`` mode, so the analysis skips it.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"CrashDropout needs 0 <= p < 1, got {p}")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand_like(x) >= self.p
        return x * keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


@dataclass(frozen=True)
class ActivationInfo:
    """An elementwise activation as the bounds see it.

    Attributes:
        name: module class name (``"Identity"`` for a linear layer).
        K: Lipschitz constant, |φ(a) − φ(b)| ≤ K·|a − b|.
        lo, hi: the activation's intrinsic range (``±inf`` where unbounded).
        fn: the elementwise function (the module itself).
        derivative: φ' as a function of the pre-activation (used by the Taylor bound b3).
        elementwise: False for Softmax (allowed only as the output activation; K is then the
            Lipschitz constant for the ℓ∞ norm).
    """

    name: str
    K: float
    lo: float
    hi: float
    fn: Callable[[torch.Tensor], torch.Tensor]
    derivative: Callable[[torch.Tensor], torch.Tensor]
    elementwise: bool = True

    @property
    def bounded(self) -> bool:
        """True when the intrinsic range is a finite interval."""
        return math.isfinite(self.lo) and math.isfinite(self.hi)


def _identity(z: torch.Tensor) -> torch.Tensor:
    return z


def _ones(z: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(z)


IDENTITY = ActivationInfo("Identity", 1.0, -math.inf, math.inf, _identity, _ones)


def activation_info(module: nn.Module) -> ActivationInfo | None:
    """Return the :class:`ActivationInfo` of ``module``, or ``None`` if it is not an activation.

    Softmax (over the last axis) is accepted as the *output* activation only: its Jacobian
    diag(s) − s·sᵀ has ℓ∞ operator norm max_i 2·s_i(1 − s_i) ≤ 1/2, so K = 1/2 for ‖·‖∞ and the
    range is [0, 1].

    Supported: ReLU (K = 1, [0, ∞)), LeakyReLU (K = max(1, |slope|)), Sigmoid (K = 1/4, [0, 1]),
    Tanh (K = 1, [−1, 1]), Softplus (K = 1, [0, ∞)), Identity (K = 1),
    :class:`ScaledSigmoid` (K given, [0, 1]) and any :class:`DeclaredActivation` (user-defined,
    with its declared K and range). Reference: *When Neurons Fail* (IPDPS 2017) requires φ
    K-Lipschitz and bounded by C.
    """
    if isinstance(module, DeclaredActivation):
        return ActivationInfo(
            module.label, module.K, module.lo, module.hi, module, module.derivative
        )
    if isinstance(module, ScaledSigmoid):
        k4 = 4.0 * module.K

        def d_ssig(z: torch.Tensor) -> torch.Tensor:
            s = torch.sigmoid(k4 * z)
            return k4 * s * (1 - s)

        return ActivationInfo("ScaledSigmoid", module.K, 0.0, 1.0, module, d_ssig)
    if isinstance(module, nn.Sigmoid):

        def d_sig(z: torch.Tensor) -> torch.Tensor:
            s = torch.sigmoid(z)
            return s * (1 - s)

        return ActivationInfo("Sigmoid", 0.25, 0.0, 1.0, module, d_sig)
    if isinstance(module, nn.Tanh):
        return ActivationInfo("Tanh", 1.0, -1.0, 1.0, module, lambda z: 1 - torch.tanh(z) ** 2)
    if isinstance(module, nn.ReLU):
        return ActivationInfo("ReLU", 1.0, 0.0, math.inf, module, lambda z: (z > 0).to(z.dtype))
    if isinstance(module, nn.LeakyReLU):
        a = float(module.negative_slope)
        lo = -math.inf if a > 0 else 0.0  # a <= 0: a·z >= 0 for z < 0
        hi = math.inf

        def d_leaky(z: torch.Tensor) -> torch.Tensor:
            return torch.where(z > 0, torch.ones_like(z), torch.full_like(z, a))

        return ActivationInfo("LeakyReLU", max(1.0, abs(a)), lo, hi, module, d_leaky)
    if isinstance(module, nn.Softplus):
        beta, thr = float(module.beta), float(module.threshold)

        def d_soft(z: torch.Tensor) -> torch.Tensor:
            return torch.where(beta * z > thr, torch.ones_like(z), torch.sigmoid(beta * z))

        return ActivationInfo("Softplus", 1.0, 0.0, math.inf, module, d_soft)
    if isinstance(module, nn.Identity):
        return IDENTITY
    if isinstance(module, nn.Softmax):
        if module.dim not in (-1, 1):
            raise ValueError(f"Softmax must act on the last axis (dim=-1), got dim={module.dim}")
        return ActivationInfo("Softmax", 0.5, 0.0, 1.0, module, _no_derivative, elementwise=False)
    return None


def _no_derivative(z: torch.Tensor) -> torch.Tensor:
    raise NotImplementedError("Softmax is not elementwise: use its Jacobian diag(s) - s s^T")
