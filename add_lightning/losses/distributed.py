"""Gathering a batch across processes so that pairwise statistics see the global batch."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from add_lightning.tensor_utils import scale_gradient


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_local_grad(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Concatenate each tensor over all ranks (rank order), keeping autograd on the local part.

    Every process computes the same global loss from the gathered batch, but gradients
    flow only through its own slice. That slice's gradient is multiplied by the world size,
    so that DDP's gradient *averaging* yields the gradient of the single-process loss on the
    whole batch. Ranks may hold different batch sizes (e.g. a last, smaller batch).

    Shape:
        - each input: [B_rank, ...] (the same trailing shape and dtype on every rank)
        - each output: [sum of B_rank, ...]
    """
    if not is_distributed():
        return tensors
    world_size, rank = dist.get_world_size(), dist.get_rank()
    device = tensors[0].device
    local_size = torch.tensor([tensors[0].shape[0]], device=device)
    sizes = [torch.zeros_like(local_size) for _ in range(world_size)]
    dist.all_gather(sizes, local_size)
    sizes = [int(s) for s in sizes]
    largest = max(sizes)
    gathered = []
    for tensor in tensors:
        padded = tensor.detach().new_zeros((largest, *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor.detach()
        parts = [torch.empty_like(padded) for _ in range(world_size)]
        dist.all_gather(parts, padded.contiguous())
        parts = [part[:size] for part, size in zip(parts, sizes)]
        if tensor.requires_grad:
            parts[rank] = scale_gradient(tensor, float(world_size))
        else:
            parts[rank] = tensor
        gathered.append(torch.cat(parts))
    return tuple(gathered)


def training_batch(loss: nn.Module, embeddings: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """The batch an embedding loss with a ``gather_distributed`` switch takes its statistics on.

    In training mode with ``loss.gather_distributed``, all ranks' embeddings and targets
    (:func:`gather_with_local_grad`); otherwise (evaluation, per-process statistics, or no
    process group) the local batch.

    Shape:
        - embeddings: ``[B, D]``; targets: ``[B]`` or ``[B, C]``
        - output: ``[B_global, D]`` and ``[B_global]`` or ``[B_global, C]``
    """
    if loss.gather_distributed and loss.training:
        embeddings, targets = gather_with_local_grad(embeddings, targets)
    return embeddings, targets
