"""
Token-level realignment divergences (arXiv 2506.12704, Eq. 5–6), streamed from hidden states and output heads.

The teacher of TrRa is `softmax(λ·z_B + (1−λ)·z_A)`. Both teacher heads are linear, so the mixture is one "virtual"
linear head: `λ(W_B h_B + b_B) + (1−λ)(W_A h_A + b_A)`. [`streamed_realign_divergence`] evaluates it, the student's
head and the divergence one chunk of tokens at a time, so the `[tokens × vocab]` logits of the student and of the
teachers never exist in full (vocab 151,936 for Qwen). It computes the student's gradients during the forward, while
the chunk's logits are at hand, so that no projection has to be recomputed in the backward: five vocabulary-sized
matrix products per token (student, two teachers, two gradients), as many as the naive full-logit loss.

Why not TRL's `trl.kernels.chunked_divergence.ChunkedDivergenceFunction`: it takes one teacher head, so the fused
teacher would need a concatenated `[V, 2H]` weight copy (1.9 GB in fp32 for a 1.5B Qwen), it cannot restrict the
loss to the rows the tokenizer produces under ZeRO-3 (a slice of a sharded weight cannot be gathered), and its
backward recomputes every projection (eight products instead of five). Its ZeRO-3 gather helper is reused.

[`naive_realign_divergence`] is the full-logit reference, for tests and benchmarks only.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
# private TRL helpers, pinned by trl<1.17 in pyproject.toml
from ._compat import addmm_fp32 as _addmm_fp32
from ._compat import full_shape, maybe_gather_lm_head_ctx


DIVERGENCES = ("reverse_kl", "forward_kl", "jsd")


class TeacherHead(NamedTuple):
    """One term `coef · (hidden @ weight.T + bias)` of the fused teacher logits. `hidden` is `[tokens, hidden_size]`."""

    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    coef: float


class RealignDivergenceOutput(NamedTuple):
    """
    loss: the divergence summed over tokens (a scalar, differentiable with respect to the student's hidden states
        and head); the caller normalises it.
    divergence, student_entropy, teacher_entropy: `[tokens]`, detached, in nats (for logging).
    """

    loss: torch.Tensor
    divergence: torch.Tensor
    student_entropy: torch.Tensor
    teacher_entropy: torch.Tensor


_DIVERGENCE_OF_BETA = {0.0: "forward_kl", 1.0: "reverse_kl"}


def resolve_divergence(divergence: str | None = None, beta: float | None = None) -> tuple[str, float]:
    """
    The divergence and its generalised-JSD weight β from either knob, as TRL's `DistillationConfig` reads `beta`:
    β=1 is KL(student ‖ teacher) (`"reverse_kl"`), β=0 KL(teacher ‖ student) (`"forward_kl"`), else `"jsd"`.

    `divergence` alone: reverse KL → β=1, forward KL → β=0, `"jsd"` → β=0.5. `beta` alone selects the divergence.
    Neither: reverse KL, the paper's Eq. 6. Both: they must agree (any β in [0, 1] with `"jsd"`).

    Returns:
        `(divergence, beta)`.
    """
    if divergence is not None and divergence not in DIVERGENCES:
        raise ValueError(f"Unknown divergence {divergence!r}; choose one of {list(DIVERGENCES)}.")
    if beta is None:
        beta = {"forward_kl": 0.0, "jsd": 0.5}.get(divergence, 1.0)
    beta = float(beta)
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"`beta` must lie in [0, 1] (0 forward KL, 1 reverse KL, in between JSD), got {beta}.")
    implied = _DIVERGENCE_OF_BETA.get(beta, "jsd")
    if divergence is None:
        return implied, beta
    if divergence != "jsd" and divergence != implied:
        raise ValueError(
            f"`beta={beta}` and `divergence={divergence!r}` disagree: beta alone selects the divergence (0 forward KL, "
            "1 reverse KL, in between the generalised JSD). Set only one of them, or `divergence='jsd'` with a beta."
        )
    return divergence, beta


def realign_logits(ref_logits: torch.Tensor, aligned_logits: torch.Tensor, realign_lambda) -> torch.Tensor:
    """`λ·z_aligned + (1−λ)·z_ref`: the realigned logits of Eq. 5. λ is a float or broadcasts against the logits."""
    return realign_lambda * aligned_logits + (1 - realign_lambda) * ref_logits


# ---------------------------------------------------------------------------------------------------- per-chunk math


def _log_mixture(log_ps, log_pt, beta: float) -> torch.Tensor:
    """log m, m = (1−β) p_s + β p_t: the mixture of the generalised JSD."""
    return torch.logaddexp(log_ps + math.log1p(-beta), log_pt + math.log(beta))


def _residual(log_ps, log_pt, beta: float, consume: bool = False) -> torch.Tensor:
    """
    r = log p_s − log q, with q = p_t for reverse KL (β=1) and q = m for the generalised JSD (0<β<1). With `consume`,
    log_pt's buffer may be overwritten (one `[chunk, vocab]` buffer fewer).
    """
    if beta == 1.0:
        return log_pt.neg_().add_(log_ps) if consume else log_ps - log_pt
    return _log_mixture(log_ps, log_pt, beta).neg_().add_(log_ps)


def _token_terms(log_ps, log_pt, ps, pt, beta: float, consume: bool = False):
    """
    Per-token divergence D of one vocabulary tile, and what the student's gradient needs (see `_logit_grad`):

    reverse KL (β=1): r = log p_s − log p_t, aux = ⟨p_s, r⟩ = D;
    generalised JSD: r = log p_s − log m, aux = ⟨p_s, r⟩ = KL(p_s ‖ m), D = (1−β) aux + β KL(p_t ‖ m);
    forward KL (β=0): D = ⟨p_t, log p_t − log p_s⟩, no aux or r.

    Over several tiles D and aux are sums of the tiles' values. Returns `(D, aux, r)`.
    """
    if beta == 0.0:
        diff = log_pt.sub_(log_ps) if consume else log_pt - log_ps
        return _vecdot(pt, diff), None, None
    if beta == 1.0:
        r = _residual(log_ps, log_pt, beta, consume)
        div = _vecdot(ps, r)
        return div, div, r
    log_m = _log_mixture(log_ps, log_pt, beta)
    kl_teacher = _vecdot(pt, log_pt - log_m)
    r = log_m.neg_().add_(log_ps)
    aux = _vecdot(ps, r)
    return (1 - beta) * aux + beta * kl_teacher, aux, r


def _logit_grad(r, aux, ps, pt, beta: float, inv_t: float) -> torch.Tensor:
    """
    d divergence / d student logits (before temperature) of one tile, from `_token_terms`' r and the whole-vocabulary
    aux. Overwrites r (or ps, for forward KL).

    With g = ∂D/∂p_s, the softmax gives ∂D/∂z = p_s ⊙ (g − ⟨p_s, g⟩) / T:
    reverse KL: p_s ⊙ (r − aux); forward KL: p_s − p_t; generalised JSD: (1−β) p_s ⊙ (r − aux).
    """
    if beta == 0.0:
        grad = ps.sub_(pt)
    else:
        grad = r.sub_(aux.unsqueeze(-1)).mul_(ps)
        if beta != 1.0:
            grad.mul_(1 - beta)
    return grad.mul_(inv_t) if inv_t != 1.0 else grad


def _linear_fp32_into(out: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, bias) -> torch.Tensor:
    """
    `hidden @ weightᵀ + bias` written into the fp32 buffer `out`, row-major or column-major (see `_ChunkBuffers`).
    A low-precision head computes the product in its dtype, as the model's own `lm_head` does, then upcasts for the
    softmax, as HF models do.
    """
    if not (hidden.dtype == weight.dtype == torch.float32 and (bias is None or bias.dtype == torch.float32)):
        return out.copy_(F.linear(hidden, weight, bias))
    if out.stride(-1) == 1:
        if bias is None:
            return torch.mm(hidden, weight.t(), out=out)
        return torch.addmm(bias, hidden, weight.t(), out=out)
    if bias is None:
        torch.mm(weight, hidden.t(), out=out.t())
    else:
        torch.addmm(bias.unsqueeze(1), weight, hidden.t(), out=out.t())
    return out


def _addmm_logits_(out: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, alpha: float) -> None:
    """`out += alpha · hidden @ weightᵀ` for fp32 operands, in `out`'s layout."""
    if out.stride(-1) == 1:
        out.addmm_(hidden, weight.t(), alpha=alpha)
    else:
        out.t().addmm_(weight, hidden.t(), alpha=alpha)


def _accumulate(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """
    `out += a @ b` into an fp32 `out`, for `a` fp32 (d loss / d logits) and `b` in the model's dtype.

    fp32 models: in place. bf16/fp16 on CUDA: TRL's helper, which accumulates the low-precision product in fp32 without
    rounding it first. Elsewhere: `b` is upcast when it is small (the hidden states, for the head's gradient); a head-
    sized `b` (the weight, for the hidden states' gradient) is not copied, the product is taken in its dtype instead.
    """
    if out.dtype == a.dtype == b.dtype:
        out.addmm_(a, b)
    elif out.device.type == "cuda":
        _addmm_fp32(out, a.to(b.dtype), b)
    elif b.numel() <= out.numel():
        out.addmm_(a.float(), b.float())
    else:
        out += (a.to(b.dtype) @ b).float()


def _fused_teacher_logits_into(out: torch.Tensor, teachers, start: int, end: int) -> torch.Tensor:
    """
    `Σ_k coef_k (h_k W_k[start:end]ᵀ + b_k)` accumulated into the fp32 buffer `out`: the fused "virtual" teacher head.
    """
    first, *rest = teachers
    # coef 1 is left as is, so λ=0 with student = reference gives bitwise-equal logits (loss exactly 0)
    _linear_fp32_into(out, first.hidden, first.weight[start:end], _rows(first.bias, start, end))
    if first.coef != 1.0:
        out.mul_(first.coef)
    for head in rest:
        weight, bias = head.weight[start:end], _rows(head.bias, start, end)
        if head.hidden.dtype == weight.dtype == torch.float32:
            _addmm_logits_(out, head.hidden, weight, head.coef)
            if bias is not None:
                out.add_(bias, alpha=head.coef)
        else:
            out.add_(F.linear(head.hidden, weight, bias), alpha=head.coef)  # upcast by the fp32 `out`
    return out


def _rows(bias, start: int, end: int):
    return None if bias is None else bias[start:end]


def _tile_logits(h_s, w_s, b_s, teachers, start: int, end: int, inv_t: float):
    """Student and fused-teacher logits, divided by T, for vocabulary rows `start:end` of one token chunk."""
    shape = (h_s.shape[0], end - start)
    z_s = _linear_fp32_into(h_s.new_empty(shape, dtype=torch.float32), h_s, w_s[start:end], _rows(b_s, start, end))
    z_t = _fused_teacher_logits_into(h_s.new_empty(shape, dtype=torch.float32), teachers, start, end)
    if inv_t != 1.0:
        z_s.mul_(inv_t)
        z_t.mul_(inv_t)
    return z_s, z_t


class _Tiles:
    """
    The logits of one token chunk, one vocabulary tile at a time: the memory-saving path, which recomputes the
    projections on every pass over the tiles.
    """

    def __init__(self, h_s, w_s, b_s, teachers, vocab_size, vocab_chunk_size, inv_t):
        self.args = (h_s, w_s, b_s, teachers)
        self.inv_t = inv_t
        self.bounds = [(s, min(s + vocab_chunk_size, vocab_size)) for s in range(0, vocab_size, vocab_chunk_size)]

    def logits(self):
        for start, end in self.bounds:
            yield start, end, *_tile_logits(*self.args, start, end, self.inv_t)

    def log_probs(self, lse_s, lse_t):
        for start, end, z_s, z_t in self.logits():
            yield start, end, z_s.sub_(lse_s.unsqueeze(-1)), z_t.sub_(lse_t.unsqueeze(-1))


def _vecdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # Row-wise dot product without an elementwise [tokens, vocab] temporary (bmm would copy column-major rows)
    if a.stride(-1) == 1 and b.stride(-1) == 1:
        return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)
    return (a * b).sum(-1)


def _vecdot_into(a: torch.Tensor, b: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """Row-wise ⟨a, b⟩ through a `[chunk, vocab]` buffer that may be `a` or `b` itself (then overwritten)."""
    return torch.mul(a, b, out=scratch).sum(-1)


def _column_major_logits(device: torch.device) -> bool:
    return device.type == "cpu"


class _ChunkBuffers:
    """
    The four `[chunk, vocab]` fp32 buffers of the whole-vocabulary path (the peak of the version that allocated them),
    allocated once per call and shared by its chunks: on CPU a fresh tensor of this size is a fresh mmap whose pages the
    kernel faults in and zeroes on first touch, once per chunk. On CPU they are column-major (`[vocab, chunk]` storage):
    with 256 rows MKL runs `W @ hᵀ` faster than `h @ Wᵀ` (about 185 vs 140 GFLOP/s at vocab 151,936 on 2 AVX2 cores),
    and the hidden states' gradient likewise, while the softmax's reductions cost about the same either way.
    """

    def __init__(self, rows: int, vocab_size: int, device):
        self.vocab_size = vocab_size
        self.column_major = _column_major_logits(torch.device(device))
        self._flat = [torch.empty(rows * vocab_size, device=device, dtype=torch.float32) for _ in range(4)]

    def take(self, rows: int) -> list[torch.Tensor]:
        """Four `[rows, vocab]` views."""
        size = rows * self.vocab_size
        if self.column_major:
            return [f[:size].view(self.vocab_size, rows).t() for f in self._flat]
        return [f[:size].view(rows, self.vocab_size) for f in self._flat]


def _log_softmax_into(logits: torch.Tensor, probs: torch.Tensor) -> None:
    """`logits` becomes log-softmax(logits) in place, `probs` softmax(logits); no other `[chunk, vocab]` tensor."""
    logits.sub_(logits.amax(-1, keepdim=True))
    torch.exp(logits, out=probs)
    total = probs.sum(-1, keepdim=True)
    probs.div_(total)
    logits.sub_(total.log_())


def _single_tile_chunk(h_s, w_s, b_s, teachers, vocab_size, beta, inv_t, want_grad, buffers):
    """
    One token chunk with the whole vocabulary in one tile, in the four `buffers` of `_ChunkBuffers.take` and no other
    `[chunk, vocab]` tensor for the KL divergences: every projection once. Returns divergence, entropies and
    d loss / d logits (a view of one of the buffers, or None).
    """
    log_ps, log_pt, ps, spare = buffers
    _linear_fp32_into(log_ps, h_s, w_s[:vocab_size], _rows(b_s, 0, vocab_size))
    _fused_teacher_logits_into(log_pt, teachers, 0, vocab_size)
    if inv_t != 1.0:
        log_ps.mul_(inv_t)
        log_pt.mul_(inv_t)
    _log_softmax_into(log_ps, ps)
    ent_s = -_vecdot_into(ps, log_ps, spare)
    pt = spare
    _log_softmax_into(log_pt, pt)
    if beta == 1.0:  # reverse KL: p_t serves only the teacher's entropy
        ent_t = -_vecdot_into(pt, log_pt, pt)
        r = _residual(log_ps, log_pt, beta, consume=True)
        div = aux = _vecdot_into(ps, r, spare)
    elif beta == 0.0:  # forward KL: D = ⟨p_t, log p_t − log p_s⟩, log p_s is not needed after it
        diff = log_ps.neg_().add_(log_pt)
        div = _vecdot_into(pt, diff, diff)
        ent_t = -_vecdot_into(pt, log_pt, log_pt)
        r = aux = None
    else:
        ent_t = -_vecdot(pt, log_pt)
        div, aux, r = _token_terms(log_ps, log_pt, ps, pt, beta, consume=True)
    dz = _logit_grad(r, aux, ps, pt, beta, inv_t) if want_grad else None
    return div, ent_s, ent_t, dz


class _StreamedRealignDivergence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student_hidden, student_weight, student_bias, teachers, options):
        vocab_size, beta, temperature, token_chunk, vocab_chunk, needs_grad = options
        inv_t = 1.0 / temperature
        n_tokens, device = student_hidden.shape[0], student_hidden.device
        divergence = torch.zeros(n_tokens, device=device, dtype=torch.float32)
        student_entropy, teacher_entropy = torch.zeros_like(divergence), torch.zeros_like(divergence)
        want_h, want_w, want_b = needs_grad
        grad_h = torch.zeros(student_hidden.shape, device=device, dtype=torch.float32) if want_h else None
        grad_w = grad_b = None

        teacher_params = [p for t in teachers for p in (t.weight, t.bias)]
        with maybe_gather_lm_head_ctx(student_weight, student_bias, *teacher_params):
            if want_w:
                grad_w = torch.zeros(student_weight.shape, device=device, dtype=torch.float32)
            if want_b:
                grad_b = torch.zeros(student_bias.shape, device=device, dtype=torch.float32)

            def add_gradients(dz, rows, h_s, start, end):
                # d loss / d logits of vocabulary rows start:end, through the head to its weight, bias and inputs
                if grad_b is not None:
                    grad_b[start:end] += dz.sum(0)
                if grad_h is not None:
                    _accumulate(grad_h[rows], dz, student_weight[start:end])
                if grad_w is not None:
                    _accumulate(grad_w[start:end], dz.t(), h_s.to(student_weight.dtype))

            single_tile = vocab_chunk >= vocab_size
            buffers = _ChunkBuffers(min(token_chunk, n_tokens), vocab_size, device) if single_tile else None
            for start in range(0, n_tokens, token_chunk):
                rows = slice(start, min(start + token_chunk, n_tokens))
                h_s = student_hidden[rows]
                chunk_teachers = [TeacherHead(t.hidden[rows], t.weight, t.bias, t.coef) for t in teachers]
                if single_tile:
                    div, ent_s, ent_t, dz = _single_tile_chunk(
                        h_s, student_weight, student_bias, chunk_teachers, vocab_size, beta, inv_t, any(needs_grad),
                        buffers.take(rows.stop - rows.start),
                    )
                    divergence[rows], student_entropy[rows], teacher_entropy[rows] = div, ent_s, ent_t
                    if dz is not None:
                        add_gradients(dz, rows, h_s, 0, vocab_size)
                    continue
                tiles = _Tiles(h_s, student_weight, student_bias, chunk_teachers, vocab_size, vocab_chunk, inv_t)

                # Pass 1: the normalisers of both distributions
                lse_s = lse_t = None
                for _, _, z_s, z_t in tiles.logits():
                    s, t = z_s.logsumexp(-1), z_t.logsumexp(-1)
                    lse_s = s if lse_s is None else torch.logaddexp(lse_s, s)
                    lse_t = t if lse_t is None else torch.logaddexp(lse_t, t)

                # Pass 2: divergence, entropies, and the per-token term of the gradient
                div, aux, ent_s, ent_t = 0.0, None, 0.0, 0.0
                for _, _, log_ps, log_pt in tiles.log_probs(lse_s, lse_t):
                    ps, pt = log_ps.exp(), log_pt.exp()
                    ent_s = ent_s - _vecdot(ps, log_ps)
                    ent_t = ent_t - _vecdot(pt, log_pt)
                    d, a, _ = _token_terms(log_ps, log_pt, ps, pt, beta, consume=True)
                    div = div + d
                    aux = a if aux is None else (aux if a is None else aux + a)
                divergence[rows], student_entropy[rows], teacher_entropy[rows] = div, ent_s, ent_t

                if any(needs_grad):
                    # Pass 3: the student's gradients, while the chunk's hidden states and head are at hand
                    for tile_start, tile_end, log_ps, log_pt in tiles.log_probs(lse_s, lse_t):
                        ps = log_ps.exp()
                        pt = log_pt.exp() if beta == 0.0 else None
                        r = None if beta == 0.0 else _residual(log_ps, log_pt, beta, consume=True)
                        add_gradients(_logit_grad(r, aux, ps, pt, beta, inv_t), rows, h_s, tile_start, tile_end)

        ctx.grads = (
            None if grad_h is None else grad_h.to(student_hidden.dtype),
            None if grad_w is None else grad_w.to(student_weight.dtype),
            None if grad_b is None else grad_b.to(student_bias.dtype),
        )
        ctx.mark_non_differentiable(divergence, student_entropy, teacher_entropy)
        return divergence.sum(), divergence, student_entropy, teacher_entropy

    @staticmethod
    def backward(ctx, grad_loss, *_):
        if ctx.grads is None:
            raise RuntimeError(
                "streamed_realign_divergence computes its gradients once, in the forward, and hands them over in the "
                "first backward: call the loss again instead of backpropagating through it twice (retain_graph)."
            )
        # The gradients were computed in the forward for the summed loss: scale them by the upstream scalar
        # in place: these tensors belong to this call, and a copy of the head's gradient would double its memory
        grads = tuple(None if g is None else g.mul_(grad_loss.to(g.dtype)) for g in ctx.grads)
        ctx.grads = None
        return (*grads, None, None)


def streamed_realign_divergence(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    student_bias: torch.Tensor | None,
    teachers: list[TeacherHead],
    *,
    vocab_size: int | None = None,
    divergence: str | None = None,
    beta: float | None = None,
    temperature: float = 1.0,
    token_chunk_size: int = 256,
    vocab_chunk_size: int | None = None,
) -> RealignDivergenceOutput:
    r"""
    Divergence between the student `softmax(W_s h_s + b_s)` and the fused teacher
    `softmax(Σ_k coef_k (W_k h_k + b_k))`, summed over tokens, without materialising `[tokens × vocab]` logits.

    For TrRa the teachers are `TeacherHead(h_B, W_B, b_B, λ)` and `TeacherHead(h_A, W_A, b_A, 1 − λ)`; a head with
    coefficient 0 may be left out.

    Args:
        student_hidden (`torch.Tensor` of shape `[tokens, hidden]`):
            The student's last hidden states at the scored positions (already masked and shifted).
        student_weight, student_bias:
            The student's output head (`lm_head.weight`, `lm_head.bias` or `None`). May be ZeRO-3 sharded.
        teachers (`list[TeacherHead]`):
            Terms of the fused teacher, each with hidden states for the same tokens. No gradient flows to them.
        vocab_size (`int`, *optional*):
            Only the first `vocab_size` rows of every head are scored: the tokens the tokenizer can produce. Heads
            padded to different sizes (151,936 vs 152,064 rows for Qwen) then mix. Defaults to the student's rows.
        divergence (`str`, *optional*), beta (`float`, *optional*):
            `"reverse_kl"` KL(student ‖ teacher) (the paper's Eq. 6, the default), `"forward_kl"` KL(teacher ‖ student),
            or `"jsd"`, the generalised Jensen–Shannon divergence of TRL's GKD with weight `beta`. `beta` alone selects
            the divergence as in TRL's distillation (see [`resolve_divergence`]); a conflicting pair is an error.
        temperature (`float`): divides every logit.
        token_chunk_size (`int`): tokens per chunk; peak memory grows with `token_chunk_size × vocab_chunk_size`.
        vocab_chunk_size (`int`, *optional*):
            Vocabulary tile. `None` (default) takes the whole vocabulary in one tile: each product is computed once.
            Smaller tiles use less memory but recompute the projections in three passes over the tiles.

    Returns:
        [`RealignDivergenceOutput`]: the summed loss (differentiable with respect to the student) and detached
        per-token divergence and entropies.
    """
    _, beta = resolve_divergence(divergence, beta)
    if not teachers:
        raise ValueError("`teachers` is empty: pass at least one `TeacherHead`.")
    if student_hidden.dim() != 2:
        raise ValueError(f"`student_hidden` must be [tokens, hidden], got shape {tuple(student_hidden.shape)}.")
    for head in teachers:
        if head.hidden.shape[0] != student_hidden.shape[0]:
            raise ValueError(
                f"A teacher has hidden states for {head.hidden.shape[0]} tokens, the student for "
                f"{student_hidden.shape[0]}: both must be taken at the same positions."
            )
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"`temperature` must be a positive finite number, got {temperature}.")
    rows = full_shape(student_weight)[0]
    vocab_size = rows if vocab_size is None else int(vocab_size)
    if token_chunk_size < 1 or (vocab_chunk_size is not None and vocab_chunk_size < 1):
        raise ValueError("`token_chunk_size` and `vocab_chunk_size` must be positive integers (or None for the vocab).")
    vocab_chunk_size = vocab_size if vocab_chunk_size is None else min(int(vocab_chunk_size), vocab_size)

    grad_on = torch.is_grad_enabled()
    needs_grad = (
        grad_on and student_hidden.requires_grad,
        grad_on and student_weight.requires_grad,
        grad_on and student_bias is not None and student_bias.requires_grad,
    )
    options = (vocab_size, beta, float(temperature), int(token_chunk_size), vocab_chunk_size, needs_grad)
    # No early return without tokens: under ZeRO-3 every process must join the heads' all-gather inside, whether or not
    # its batch scores a token, or the others wait in it forever. With no rows the loss is 0, its gradients zeros.
    loss, div, ent_s, ent_t = _StreamedRealignDivergence.apply(
        student_hidden, student_weight, student_bias, tuple(teachers), options
    )
    return RealignDivergenceOutput(loss, div, ent_s, ent_t)


def naive_realign_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    divergence: str | None = None,
    beta: float | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """
    Per-token divergence from full `[..., vocab]` logits (the fused teacher's, e.g. from [`realign_logits`]). The
    reference for tests and benchmarks: it materialises everything, and autograd differentiates it.
    """
    _, beta = resolve_divergence(divergence, beta)
    # The row-wise terms work on `[rows, vocab]`: flatten the leading dimensions and restore them after
    leading, vocab = student_logits.shape[:-1], student_logits.shape[-1]
    log_ps = F.log_softmax(student_logits.float().reshape(-1, vocab) / temperature, dim=-1)
    log_pt = F.log_softmax(teacher_logits.float().reshape(-1, vocab) / temperature, dim=-1)
    return _token_terms(log_ps, log_pt, log_ps.exp(), log_pt.exp(), beta)[0].reshape(leading)
