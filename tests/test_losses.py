import pytest
import torch
from trl.experimental.gkd import GKDTrainer

from trl_realign.losses import (
    TeacherHead,
    naive_realign_divergence,
    realign_logits,
    resolve_divergence,
    streamed_realign_divergence,
)


def make_case(seed=0, tokens=23, hidden=16, vocab=50, extra_rows=(0, 0, 0), bias=True):
    g = torch.Generator().manual_seed(seed)

    def head(rows):
        w = torch.randn(vocab + rows, hidden, generator=g) * 0.3
        b = torch.randn(vocab + rows, generator=g) * 0.3 if bias else None
        return w, b

    h_s, h_a, h_b = (torch.randn(tokens, hidden, generator=g) for _ in range(3))
    return h_s, head(extra_rows[0]), h_a, head(extra_rows[1]), h_b, head(extra_rows[2])


def full_logits(h, head, vocab):
    w, b = head
    return torch.nn.functional.linear(h, w, b)[:, :vocab]


@pytest.mark.parametrize("lam", [-0.5, 0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("divergence,beta", [("reverse_kl", None), ("forward_kl", None), ("jsd", 0.3)])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("vocab_chunk", [None, 13])
def test_streamed_matches_trl_generalized_jsd_and_naive(lam, divergence, beta, temperature, vocab_chunk):
    vocab = 50
    # Heads padded to different row counts, as Qwen's 151,936 vs 152,064: only the tokenizer's rows count
    h_s, head_s, h_a, head_a, h_b, head_b = make_case(extra_rows=(3, 0, 7))
    h_s = h_s.requires_grad_(True)
    w_s = head_s[0].clone().requires_grad_(True)
    b_s = head_s[1].clone().requires_grad_(True)
    teachers = [TeacherHead(h_b, *head_b, lam), TeacherHead(h_a, *head_a, 1 - lam)]
    out = streamed_realign_divergence(
        h_s, w_s, b_s, teachers, vocab_size=vocab, divergence=divergence, beta=beta,
        temperature=temperature, token_chunk_size=5, vocab_chunk_size=vocab_chunk,
    )
    grads = torch.autograd.grad(out.loss, [h_s, w_s, b_s])

    # Reference: TRL's GKD loss on the full fused teacher logits ("sum" over tokens)
    h_s2 = h_s.detach().clone().requires_grad_(True)
    w_s2 = head_s[0].clone().requires_grad_(True)
    b_s2 = head_s[1].clone().requires_grad_(True)
    z_s = torch.nn.functional.linear(h_s2, w_s2, b_s2)[:, :vocab]
    z_t = realign_logits(full_logits(h_a, head_a, vocab), full_logits(h_b, head_b, vocab), lam)
    expected = GKDTrainer.generalized_jsd_loss(
        z_s.unsqueeze(0), z_t.unsqueeze(0), beta=resolve_divergence(divergence, beta)[1],
        temperature=temperature, reduction="sum",
    )
    expected_grads = torch.autograd.grad(expected, [h_s2, w_s2, b_s2])
    torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    # Padding rows of the student's head get no gradient
    assert grads[1][vocab:].abs().max() == 0 and grads[2][vocab:].abs().max() == 0

    naive = naive_realign_divergence(z_s.detach(), z_t, divergence=divergence, beta=beta,
                                     temperature=temperature)
    torch.testing.assert_close(out.divergence, naive, atol=1e-5, rtol=1e-5)
    log_ps = torch.log_softmax(z_s.detach() / temperature, -1)
    log_pt = torch.log_softmax(z_t / temperature, -1)
    torch.testing.assert_close(out.student_entropy, -(log_ps.exp() * log_ps).sum(-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.teacher_entropy, -(log_pt.exp() * log_pt).sum(-1), atol=1e-5, rtol=1e-5)


def test_matches_trl_chunked_divergence_kernel():
    from trl.kernels.chunked_divergence import ChunkedDivergenceFunction

    h_s, head_s, h_a, head_a, h_b, head_b = make_case(seed=3)
    lam = 2.0
    out = streamed_realign_divergence(
        h_s, *head_s, [TeacherHead(h_b, *head_b, lam), TeacherHead(h_a, *head_a, 1 - lam)], divergence="reverse_kl"
    )
    # TRL's kernel takes one teacher head: concatenate the two into the fused head explicitly
    fused_hidden = torch.cat([lam * h_b, (1 - lam) * h_a], dim=-1)
    fused_weight = torch.cat([head_b[0], head_a[0]], dim=-1)
    fused_bias = lam * head_b[1] + (1 - lam) * head_a[1]
    divergence, entropy = ChunkedDivergenceFunction.apply(h_s, *head_s, fused_hidden, fused_weight, fused_bias, 1.0)
    torch.testing.assert_close(out.divergence, divergence, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.student_entropy, entropy, atol=1e-5, rtol=1e-5)


def test_student_equal_to_single_teacher_gives_exact_zero():
    h, head, *_ = make_case()
    out = streamed_realign_divergence(h, *head, [TeacherHead(h.clone(), head[0].clone(), head[1].clone(), 1.0)])
    assert out.loss.item() == 0.0 and out.divergence.abs().max().item() == 0.0


def test_loss_is_a_sum_and_upstream_gradient_scales_it():
    h_s, head_s, h_a, head_a, *_ = make_case()
    w = head_s[0].clone().requires_grad_(True)
    out = streamed_realign_divergence(h_s, w, head_s[1], [TeacherHead(h_a, *head_a, 1.0)])
    torch.testing.assert_close(out.loss, out.divergence.sum())
    (g1,) = torch.autograd.grad(out.loss, w)
    out = streamed_realign_divergence(h_s, w, head_s[1], [TeacherHead(h_a, *head_a, 1.0)])
    (g3,) = torch.autograd.grad(out.loss / 3.0, w)
    torch.testing.assert_close(g3, g1 / 3.0)


def test_no_tokens_gives_zero_with_finite_gradients():
    h_s, head_s, h_a, head_a, *_ = make_case(tokens=0)
    w = head_s[0].clone().requires_grad_(True)
    out = streamed_realign_divergence(h_s.requires_grad_(True), w, None, [TeacherHead(h_a, head_a[0], None, 1.0)])
    assert out.loss.item() == 0.0 and out.divergence.numel() == 0
    out.loss.backward()
    assert w.grad is not None and torch.all(w.grad == 0)


def test_no_grad_mode_returns_values_without_gradients():
    h_s, head_s, h_a, head_a, *_ = make_case()
    w = head_s[0].clone().requires_grad_(True)
    with torch.no_grad():
        out = streamed_realign_divergence(h_s, w, head_s[1], [TeacherHead(h_a, *head_a, 1.0)])
    assert not out.loss.requires_grad and out.loss.item() > 0


@pytest.mark.parametrize("vocab_chunk", [None, 13])
def test_bf16_heads_track_the_fp32_loss(vocab_chunk):
    h_s, head_s, h_a, head_a, h_b, head_b = make_case(hidden=32)
    teachers = [TeacherHead(h_b, *head_b, 1.5), TeacherHead(h_a, *head_a, -0.5)]
    ref = streamed_realign_divergence(h_s, *head_s, teachers).loss
    to16 = lambda t: None if t is None else t.to(torch.bfloat16)  # noqa: E731
    w16 = to16(head_s[0]).requires_grad_(True)
    out = streamed_realign_divergence(
        to16(h_s), w16, to16(head_s[1]),
        [TeacherHead(to16(t.hidden), to16(t.weight), to16(t.bias), t.coef) for t in teachers], vocab_chunk_size=vocab_chunk,
    )
    out.loss.backward()
    assert w16.grad.dtype == torch.bfloat16 and torch.isfinite(w16.grad.float()).all()
    torch.testing.assert_close(out.loss, ref, rtol=5e-2, atol=5e-2)
    w32 = head_s[0].clone().requires_grad_(True)
    streamed_realign_divergence(h_s, w32, head_s[1], teachers, vocab_chunk_size=vocab_chunk).loss.backward()
    # bf16 inputs, fp32 accumulation: the head's gradient stays within bf16 rounding of the fp32 one
    assert (w16.grad.float() - w32.grad).norm() / w32.grad.norm() < 3e-2


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(divergence="kl"), "Unknown divergence"),
        (dict(divergence="jsd", beta=1.5), "beta"),
        (dict(temperature=0.0), "temperature"),
        (dict(token_chunk_size=0), "positive"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, match):
    h_s, head_s, h_a, head_a, *_ = make_case()
    with pytest.raises(ValueError, match=match):
        streamed_realign_divergence(h_s, *head_s, [TeacherHead(h_a, *head_a, 1.0)], **kwargs)


@pytest.mark.parametrize(
    "divergence,beta,expected",
    [(None, None, ("reverse_kl", 1.0)), (None, 0.0, ("forward_kl", 0.0)), (None, 0.4, ("jsd", 0.4)),
     ("forward_kl", None, ("forward_kl", 0.0)), ("jsd", None, ("jsd", 0.5)), ("jsd", 1.0, ("jsd", 1.0))],
)  # fmt: skip
def test_beta_alone_selects_the_divergence(divergence, beta, expected):
    assert resolve_divergence(divergence, beta) == expected


def test_beta_zero_alone_is_forward_kl_and_a_conflicting_pair_is_rejected():
    h_s, head_s, h_a, head_a, *_ = make_case()
    teachers = [TeacherHead(h_a, *head_a, 1.0)]
    by_beta = streamed_realign_divergence(h_s, *head_s, teachers, beta=0.0).loss
    by_name = streamed_realign_divergence(h_s, *head_s, teachers, divergence="forward_kl").loss
    assert by_beta.item() == by_name.item()
    assert by_beta.item() != streamed_realign_divergence(h_s, *head_s, teachers).loss.item()
    with pytest.raises(ValueError, match="beta=0.5.*reverse_kl"):
        streamed_realign_divergence(h_s, *head_s, teachers, divergence="reverse_kl", beta=0.5)


def test_teacher_with_other_token_count_is_rejected():
    h_s, head_s, h_a, head_a, *_ = make_case()
    with pytest.raises(ValueError, match="same positions"):
        streamed_realign_divergence(h_s, *head_s, [TeacherHead(h_a[:-1], *head_a, 1.0)])


def test_second_backward_through_the_same_loss_is_refused_clearly():
    h_s, head_s, h_a, head_a, *_ = make_case()
    w = head_s[0].clone().requires_grad_(True)
    out = streamed_realign_divergence(h_s, w, head_s[1], [TeacherHead(h_a, *head_a, 1.0)])
    out.loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="call the loss again"):
        out.loss.backward()


@pytest.mark.parametrize("divergence", ["reverse_kl", "forward_kl", "jsd"])
def test_naive_reference_takes_any_leading_shape(divergence):
    # `[batch, length, vocab]` logits, as a model returns them: the same per-token values as the flattened rows
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 11), torch.randn(2, 3, 11)
    batched = naive_realign_divergence(student, teacher, divergence=divergence)
    rows = naive_realign_divergence(student.reshape(6, 11), teacher.reshape(6, 11), divergence=divergence)
    assert batched.shape == (2, 3)
    torch.testing.assert_close(batched.reshape(6), rows, rtol=0, atol=0)


@pytest.mark.parametrize("divergence", ["reverse_kl", "forward_kl"])
def test_chunk_buffers_are_allocated_once_per_call_not_once_per_chunk(divergence):
    # On CPU every fresh [chunk, vocab] tensor is a fresh mmap whose pages the kernel faults in and zeroes; at vocab
    # 151,936 that cost a fifth of the loss's time. The chunks must share their buffers.
    from torch.profiler import ProfilerActivity, profile

    tokens, hidden, vocab, chunk = 64, 24, 512, 8  # 8 chunks; no other tensor has a chunk buffer's size
    h_s, head_s, h_a, head_a, h_b, head_b = make_case(tokens=tokens, hidden=hidden, vocab=vocab, bias=False)
    h_s.requires_grad_(True)
    w_s = head_s[0].requires_grad_(True)
    teachers = [TeacherHead(h_b, head_b[0], None, 2.0), TeacherHead(h_a, head_a[0], None, -1.0)]
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = streamed_realign_divergence(h_s, w_s, None, teachers, divergence=divergence, token_chunk_size=chunk)
        out.loss.backward()
    buffer_bytes = chunk * vocab * 4
    chunk_sized = [e.name for e in prof.events() if e.self_cpu_memory_usage == buffer_bytes]
    assert len(chunk_sized) <= 4, f"{len(chunk_sized)} chunk-sized allocations for 8 chunks: {chunk_sized}"
    # and the values are still the naive loss's
    z_t = 2.0 * full_logits(h_b, head_b, vocab) - full_logits(h_a, head_a, vocab)
    naive = naive_realign_divergence(full_logits(h_s, (w_s, None), vocab), z_t, divergence=divergence).sum()
    torch.testing.assert_close(out.loss, naive, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("column_major", [True, False])
@pytest.mark.parametrize("divergence,beta", [("reverse_kl", None), ("forward_kl", None), ("jsd", 0.3)])
def test_both_chunk_layouts_match_the_naive_loss(monkeypatch, column_major, divergence, beta):
    # CPU computes the logits column-major, CUDA row-major: both layouts are checked here, on CPU
    import trl_realign.losses as losses

    monkeypatch.setattr(losses, "_column_major_logits", lambda device: column_major)
    vocab = 50
    h_s, head_s, h_a, head_a, h_b, head_b = make_case(extra_rows=(3, 0, 7))
    h_s.requires_grad_(True)
    w_s, b_s = (t.clone().requires_grad_(True) for t in head_s)
    teachers = [TeacherHead(h_b, *head_b, 2.0), TeacherHead(h_a, *head_a, -1.0)]
    out = streamed_realign_divergence(h_s, w_s, b_s, teachers, vocab_size=vocab, divergence=divergence, beta=beta,
                                      temperature=0.7, token_chunk_size=5)
    out.loss.backward()
    grads = [t.grad.clone() for t in (h_s, w_s, b_s)]
    for t in (h_s, w_s, b_s):
        t.grad = None
    z_t = 2.0 * full_logits(h_b, head_b, vocab) - full_logits(h_a, head_a, vocab)
    naive = naive_realign_divergence(full_logits(h_s, (w_s, b_s), vocab), z_t, divergence=divergence, beta=beta,
                                     temperature=0.7)
    naive.sum().backward()
    torch.testing.assert_close(out.divergence, naive.detach(), rtol=1e-5, atol=1e-6)
    for got, t in zip(grads, (h_s, w_s, b_s)):
        torch.testing.assert_close(got, t.grad, rtol=1e-5, atol=1e-6)
