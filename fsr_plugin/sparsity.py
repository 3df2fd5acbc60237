"""Hierarchical-sparsity regulariser: a per-layer, per-patch density penalty on the hidden activations S_l.

FSR.md section 1: for every layer l and patch p, [S_l]_p is a sparse vector. The penalty measures, for each patch, a
differentiable, scale-invariant *density* in [0, 1] (0 = sparse, 1 = dense), averages it over the patches of a
sample, optionally subtracts a target, and weights it per layer.

Patches. Activations a [N, C, H, W] (cast to float32) are cut into q x q windows with stride s (default s = q, i.e.
non-overlapping tiles; q = 1 is per position; windows that do not fit are dropped, as F.unfold does). The patch vector
a_p has D = C * q * q entries (all channels at all positions of the window).

Densities of one patch vector a (eps > 0 guards all-zero patches; rms_eps(a) = sqrt(mean_j a_j^2 + eps)):

* 'l1':    mean_j relu(a_j) / rms_eps(a).  Equals |a+|_1 / (sqrt(D) |a|_2) for eps = 0: 1 when all entries are equal
           and positive, 1/sqrt(D) for a single positive entry, 0 for a patch without positive entries (or all zero).
           The positive part is counted (ReLU/leaky-ReLU "on" units); negative values only enlarge the norm.
* 'hoyer': 1 - Hoyer sparsity, Hoyer(a) = (sqrt(D) - |a|_1 / |a|_2) / (sqrt(D) - 1) as in FSR.md section 4, i.e.
           relu((sqrt(D) * mean_j |a_j| / rms_eps(a) - 1) / (sqrt(D) - 1)): 0 for a one-hot patch (Hoyer 1), 1 for a
           uniform one (Hoyer 0); the relu keeps it >= 0 for near-zero patches where eps dominates. Needs D >= 2.
* 'topk':  energy outside the top-k channels. Channel energies e_c = sum over the window's positions of a_c^2;
           density = (sum_c e_c - sum of the k largest e_c) / (sum_c e_c + D * eps). 0 when at most k channels are
           non-zero in the patch; at most 1 - k/C. Needs 1 <= k < C.

Per-sample penalty of layer r: P_r[n] = mean_p density[n, p] (no target) or relu(mean_p density[n, p] - target_r)
(penalises only density above the target; zero gradient below it). The weighted term is w_r * P_r[n].
"""

import math

import torch
import torch.nn.functional as F

SPARSITY_MODES = ('l1', 'hoyer', 'topk')


def _patches(act, patch_size, stride):
    """act [N, C, H, W] -> [N, C, q*q, P] (channel, position within the window, window index)."""
    N, C, H, W = act.shape
    if patch_size == 1 and stride == 1:
        return act.reshape(N, C, 1, H * W)
    cols = F.unfold(act, kernel_size=patch_size, stride=stride)  # [N, C*q*q, P], channel-major
    return cols.reshape(N, C, patch_size * patch_size, cols.shape[-1])


class _MeanOverRms(torch.autograd.Function):
    """t[n, p] = mean_j f(a[n, j, p]) / sqrt(mean_j a[n, j, p]^2 + eps) for f = relu ('relu') or abs ('abs').

    The ratio behind the 'l1' and 'hoyer' densities as one autograd node: the forward pass keeps no per-entry
    intermediates and the backward pass is one fused expression,

        dt / da_j = f'(a_j) / (D rms) - t a_j / (D rms^2),   rms = sqrt(mean_j a_j^2 + eps),

    (f' = 1[a_j > 0] for relu, sign(a_j) for abs, i.e. 0 at a_j = 0 like torch's relu/abs), instead of the half
    dozen full-size tensors that autograd keeps and walks for the composed expression. Same values as
    f(a).mean(dim=1) / (a.square().mean(dim=1) + eps).sqrt() up to float rounding. Once differentiable.
    """

    @staticmethod
    def forward(ctx, a, kind, eps):  # pylint: disable=arguments-differ
        # Plain elementwise-then-sum passes: on CPU they are far faster than vector_norm / where over dim 1.
        m1 = (a.clamp(min=0) if kind == 'relu' else a.abs()).mean(dim=1)
        rms = (a.square().mean(dim=1) + eps).sqrt()
        t = m1 / rms
        ctx.kind = kind
        ctx.save_for_backward(a, rms, t)
        return t

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_t):  # pylint: disable=arguments-differ
        a, rms, t = ctx.saved_tensors
        c_f = (grad_t / (a.shape[1] * rms)).unsqueeze(1)  # [N, 1, P]: coefficient of f'(a)
        c_a = c_f * (t / rms).unsqueeze(1)                # [N, 1, P]: coefficient of a
        grad = torch.sign(a)  # f'(a): sign for abs, its positive part (1[a > 0]) for relu
        if ctx.kind == 'relu':
            grad.clamp_(min=0)
        return grad.mul_(c_f).addcmul_(a, c_a, value=-1), None, None


def patch_density(act, mode='l1', patch_size=1, patch_stride=None, topk=1, eps=1e-4):
    """Density in [0, 1] of every patch of every sample (see the module docstring for the definitions).

    act: [N, C, H, W] hidden activations (any float dtype; computed in float32, or float64 if given float64).
    mode: 'l1', 'hoyer' or 'topk'. patch_size: q >= 1 (q <= H, W). patch_stride: window stride (default q).
    topk: k for mode 'topk'. eps: > 0, added to the mean square of a patch. Returns [N, P] (P = number of windows).
    """
    if mode not in SPARSITY_MODES:
        raise ValueError(f'sparsity mode must be one of {SPARSITY_MODES}, got {mode!r}')
    if not isinstance(act, torch.Tensor) or act.ndim != 4 or not act.is_floating_point():
        raise ValueError(f'patch_density: act must be a float tensor [N, C, H, W], got '
                         f'{list(act.shape) if isinstance(act, torch.Tensor) else type(act).__name__}')
    q = int(patch_size)
    s = q if patch_stride is None else int(patch_stride)
    if q < 1 or s < 1:
        raise ValueError(f'patch_density: patch_size and patch_stride must be >= 1, got {patch_size}, {patch_stride}')
    N, C, H, W = act.shape
    if q > H or q > W:
        raise ValueError(f'patch_density: patch_size {q} is larger than the activations ({H}x{W})')
    if not eps > 0:
        raise ValueError(f'patch_density: eps must be > 0, got {eps}')
    if act.dtype != torch.float64:
        act = act.to(torch.float32)
    a = _patches(act, q, s)  # [N, C, q*q, P]
    D = C * q * q
    flat = a.reshape(N, D, -1)
    if mode == 'l1':
        return _MeanOverRms.apply(flat, 'relu', float(eps))  # mean_j relu(a_j) / rms_eps(a), [N, P]
    if mode == 'hoyer':
        if D < 2:
            raise ValueError('patch_density: Hoyer sparsity needs at least 2 entries per patch')
        sqrt_d = math.sqrt(D)
        return ((sqrt_d * _MeanOverRms.apply(flat, 'abs', float(eps)) - 1) / (sqrt_d - 1)).relu()
    k = int(topk)
    if not 1 <= k < C:
        raise ValueError(f'patch_density: topk must satisfy 1 <= k < channels ({C}), got {topk}')
    energy = a.square().sum(dim=2)  # [N, C, P]
    total = energy.sum(dim=1)
    top = energy.topk(k, dim=1).values.sum(dim=1)
    return (total - top) / (total + D * eps)


class SparsityPenalty:
    """Weighted per-layer density penalty on hidden features.

    weights: {resolution: weight} (layers with weight 0 or absent from the features are skipped). mode, patch_size,
    patch_stride, topk, eps: as in patch_density. target: None (penalise the mean density), a float, or {resolution:
    float} (penalise only the part of the mean density above it). Plain object without parameters or state.
    """

    def __init__(self, weights, mode='l1', patch_size=1, patch_stride=None, topk=1, target=None, eps=1e-4):
        if mode not in SPARSITY_MODES:
            raise ValueError(f'sparsity mode must be one of {SPARSITY_MODES}, got {mode!r}')
        if not isinstance(weights, dict):
            raise ValueError(f'sparsity weights must be a dict {{resolution: weight}}, got {weights!r}')
        for r, w in weights.items():
            if not float(w) >= 0:
                raise ValueError(f'sparsity weight of resolution {r} must be >= 0, got {w}')
        self.weights = {int(r): float(w) for r, w in weights.items()}
        if target is None or isinstance(target, dict):
            self.targets = {int(r): float(t) for r, t in (target or {}).items()}
            self.default_target = None
        else:
            self.targets = {}
            self.default_target = float(target)
        for t in list(self.targets.values()) + ([self.default_target] if self.default_target is not None else []):
            if not 0 <= t <= 1:
                raise ValueError(f'sparsity target must be in [0, 1], got {t}')
        self.mode = mode
        self.patch_size = int(patch_size)
        self.patch_stride = patch_stride
        self.topk = int(topk)
        self.eps = float(eps)

    def target(self, r):
        """Target density of layer r, or None."""
        return self.targets.get(int(r), self.default_target)

    def layer_penalty(self, act, r):
        """Unweighted per-sample penalty of layer r: (penalty [N], mean density [N])."""
        density = patch_density(act, self.mode, self.patch_size, self.patch_stride, self.topk, self.eps).mean(dim=1)
        t = self.target(r)
        penalty = density if t is None else (density - t).relu()
        return penalty, density

    def __call__(self, features):
        """features: {r: S_r [N, C_r, r, r]}. Returns (penalties, report): penalties = {r: w_r * P_r [N]} for every
        weighted layer present; report = {'density_r<r>': mean density (detached scalar), 'penalty_r<r>': mean
        unweighted penalty (detached scalar)}."""
        penalties = {}
        report = {}
        for r, act in sorted(features.items()):
            w = self.weights.get(int(r), 0.0)
            if w == 0:
                continue
            penalty, density = self.layer_penalty(act, r)
            penalties[r] = penalty * w
            report[f'density_r{r}'] = density.detach().mean()
            report[f'penalty_r{r}'] = penalty.detach().mean()
        return penalties, report
