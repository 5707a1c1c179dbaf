"""The unembedding and the label log-probs in one step, with the [rows, vocab] logits written into a buffer kept from
one step to the next (CPU).

A training step's logits are 0.4-1.6 GB (8,192 label rows of Pythia's 50,304-token vocabulary in phase 3). Written
into fresh memory, the unembedding's matmul page-faults through all of it every step: on a 2-core AMD EPYC with
AVX-512 bf16 it ran at 38% of the bf16 matmul peak inside a phase-3 step (1.18 s), where the same matmul into memory
written before runs at 85-95% and its two gradients ran at 78-83%. Here the head's matmul writes into a `LogitsBuffer`
(`torch.mm(..., out=)`), the label log-probs are taken from it (`negrl.model.label_logprobs`, same chunks), and the
backward writes the logits' gradient into the same buffer, then computes the head's two gradients as autograd's own
matmul backward does (the same operands, layouts and order: bit-identical), and hands the buffer back for the next
step. A buffer is used by one graph at a time: it is taken in the forward and given back after the backward (or at
once without gradients); a graph dropped without its backward just lets its buffer go.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from negrl.model.label_logprobs import chunk_rows, label_logprobs_and_lse, label_logprobs_grad

BufferKey = tuple[tuple[int, int], torch.dtype, torch.device]


class LogitsBuffer:
    """Logits tensors kept between calls, one per shape, dtype and device, the `capacity` most recently used (one:
    a model's training steps, or the reference's calls, have one shape a phase). Inference-mode tensors are not kept:
    one cannot be written outside inference mode, and an evaluation's logits (6,144 rows at the paper's sizes, fp32:
    1.2 GB) would stay allocated for the whole run, for no gain measured (pythia-70m: 3.46 s an evaluation without,
    3.52 s with). Not copied with its owner (`deepcopy` gives an empty one): a frozen copy of a model computes into
    its own."""

    def __init__(self, capacity: int = 1):
        self.capacity = capacity
        self.free: OrderedDict[BufferKey, torch.Tensor] = OrderedDict()

    def take(self, shape: tuple[int, int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A [rows, vocab] tensor to write (its contents undefined): the kept one of this key, else a new one."""
        kept = self.free.pop((shape, dtype, device), None)
        return kept if kept is not None else torch.empty(shape, dtype=dtype, device=device)

    def give(self, tensor: torch.Tensor) -> None:
        """Keep `tensor` for the next `take` of its key (nobody else may hold it); an inference tensor is let go."""
        if tensor.is_inference():
            return
        key = (tuple(tensor.shape), tensor.dtype, tensor.device)
        self.free[key] = tensor
        self.free.move_to_end(key)
        while len(self.free) > self.capacity:
            self.free.popitem(last=False)

    def __deepcopy__(self, memo: dict) -> LogitsBuffer:
        return LogitsBuffer(self.capacity)


def _logits_into(hidden: torch.Tensor, weight: torch.Tensor, buffer: LogitsBuffer) -> torch.Tensor:
    """hidden [N, d] @ weight[V, d].T written into a buffer's [N, V] tensor (what `F.linear` computes, bit for bit)."""
    logits = buffer.take((hidden.shape[0], weight.shape[0]), hidden.dtype, hidden.device)
    return torch.mm(hidden, weight.t(), out=logits)


class _HeadLabelLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk: int, buffer: LogitsBuffer):
        logits = _logits_into(hidden, weight, buffer)
        logprobs, lse = label_logprobs_and_lse(logits, labels, chunk)
        ctx.save_for_backward(hidden, weight, labels, lse)
        ctx.logits, ctx.chunk, ctx.buffer = logits, chunk, buffer
        return logprobs

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.logits is None:
            raise RuntimeError(
                "backward through negrl's fused head log-probs a second time: its logits buffer was handed back after "
                "the first (compute the log-probs again, or set compute.fused_logprobs=false)"
            )
        hidden, weight, labels, lse = ctx.saved_tensors
        grad_logits = label_logprobs_grad(ctx.logits, labels, lse, grad, ctx.chunk)
        # As autograd's backward of mm(hidden, weight.t()) computes them: grad @ weight, and (grad.T @ hidden) for
        # the transposed operand.
        grad_hidden = grad_logits.mm(weight) if ctx.needs_input_grad[0] else None
        grad_weight = grad_logits.t().mm(hidden) if ctx.needs_input_grad[1] else None
        ctx.buffer.give(ctx.logits)
        ctx.logits = None
        return grad_hidden, grad_weight, None, None, None


def head_label_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, buffer: LogitsBuffer
) -> torch.Tensor:
    """log softmax(hidden @ weight.T)[label] in fp32: hidden [..., d], weight [V, d] (a bias-free head), labels [...]
    -> [...]. Under autocast both operands are cast to its dtype first, as `F.linear` would be."""
    if torch.is_autocast_enabled(hidden.device.type):
        dtype = torch.get_autocast_dtype(hidden.device.type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    flat, labels = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
    chunk = chunk_rows(weight.shape[0])
    with torch.autocast(hidden.device.type, enabled=False):
        if torch.is_grad_enabled() and (flat.requires_grad or weight.requires_grad):
            out = _HeadLabelLogprobs.apply(flat, weight, labels, chunk, buffer)
        else:
            logits = _logits_into(flat, weight, buffer)
            out, _ = label_logprobs_and_lse(logits, labels, chunk)
            buffer.give(logits)
    return out.view(hidden.shape[:-1])
