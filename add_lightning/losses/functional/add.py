"""Angular Distance Distribution (ADD) terms: the functional core of :class:`ADDLoss`.

Reference: A. Almudévar et al., "Angular Distance Distribution Loss for Audio Classification".
"""

from __future__ import annotations

import torch
from torch import Tensor

from add_lightning.losses.functional._pairs import (
    check_embeddings_and_targets,
    masked_mean_std,
    off_diagonal,
    sqrt0,
)
from add_lightning.tensor_utils import normalize_rows

#: Two normalised label vectors closer than this (cosine distance) count as the same class.
SAME_LABEL_TOLERANCE = 1e-3


def add_terms(embeddings: Tensor, targets: Tensor) -> dict[str, Tensor]:
    r"""Statistics of the angular distance distribution of a batch.

    Embeddings are L2-normalised and compared by cosine distance
    :math:`d(a, b) = 1 - a \cdot b \in [0, 2]` over the ordered pairs :math:`i \ne j`.

    Hard targets (integer class ids) give the four terms of the paper::

        D_p = { d(z_i, z_j)^2       : y_i == y_j, i != j }   -> mu_p, sigma_p
        D_n = { (1 - d(z_i, z_j))^2 : y_i != y_j }           -> mu_n, sigma_n

    with means and unbiased standard deviations (divide by ``|D| - 1``).

    Soft targets (class probabilities, e.g. after mixup) are L2-normalised and give::

        mu      = 1 / (B (B - 1)) * sum_{i != j} (d(y_i, y_j) - d(z_i, z_j))^2
        sigma_p = std of d(z_i, z_j)^2 over the pairs with d(y_i, y_j) < 1e-3

    With one-hot soft targets, ``mu == (|D_p| mu_p + |D_n| mu_n) / (B (B - 1))``.

    A term whose set is empty (no same-class pair, or fewer than two elements for a
    standard deviation) is 0, with a finite gradient. Statistics are computed in float32
    (float64 for float64 input), also under autocast.

    Args:
        embeddings: Embeddings; any non-zero scale (they are normalised here).
        targets: Integer class ids, or class probabilities.

    Returns:
        Hard targets: ``{"mu_p", "sigma_p", "mu_n", "sigma_n"}``; soft targets:
        ``{"mu", "sigma_p"}``; each a 0-dim tensor.

    Shape:
        - embeddings: [B, D]
        - targets: [B] (int64) or [B, C] (float)
    """
    soft, targets = check_embeddings_and_targets(embeddings, targets)
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        z = normalize_rows(embeddings)
        if soft:
            distance = 1.0 - z @ z.T
            pairs = off_diagonal(z.shape[0], z.device)
            y = normalize_rows(targets)
            label_distance = 1.0 - y @ y.T
            same = (label_distance < SAME_LABEL_TOLERANCE) & pairs
            num_pairs = pairs.sum().clamp_min(1)
            mu = ((label_distance - distance).pow(2) * pairs).sum() / num_pairs
            _, sigma_p = masked_mean_std(distance.pow(2), same)
            return {"mu": mu, "sigma_p": sigma_p}
        same_class = (targets[:, None] == targets[None, :]).to(z.dtype)
        mu_p, sigma_p, mu_n, sigma_n = _HardTerms.apply(z, same_class)
        return {"mu_p": mu_p, "sigma_p": sigma_p, "mu_n": mu_n, "sigma_n": sigma_n}


class _HardTerms(torch.autograd.Function):
    """mu_p, sigma_p, mu_n, sigma_n from unit embeddings, with a hand-written backward.

    Autograd through the plain expressions costs about 40 passes over the B x B pair matrix;
    this costs about 14 and one matrix product less, which keeps the loss within a small
    factor of the Gram matrix that any all-pairs loss must compute (benchmarks/bench_losses.py).

    With ``S`` the same-class indicator (1 on the diagonal), both sets are squares of one
    matrix: ``d^2 = (1 - G)^2 = (G - S)^2`` on same-class pairs and ``(1 - d)^2 = G^2 =
    (G - S)^2`` on the others. The gradient of a mean is ``1/n`` per element and that of an
    unbiased standard deviation ``(x - mu) / ((n - 1) sigma)`` (0 at zero spread).
    """

    @staticmethod
    def forward(ctx, z: Tensor, same: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        batch = z.shape[0]
        deviation = z @ z.T - same
        values = deviation.square()
        same_flat = same.view(-1)
        n_p = same_flat.sum() - batch
        n_n = batch * batch - batch - n_p
        values_diagonal = values.diagonal().sum()
        sum_p = torch.dot(values.view(-1), same_flat) - values_diagonal
        sum_n = values.sum() - values_diagonal - sum_p
        # Where a set is empty its sum is a rounding residue of the subtractions: report 0.
        mu_p = torch.where(n_p > 0, sum_p / n_p.clamp_min(1), 0.0)
        mu_n = torch.where(n_n > 0, sum_n / n_n.clamp_min(1), 0.0)
        centred = values - mu_n
        centred -= same * (mu_p - mu_n)
        # The pairs i == j belong to neither set. Zeroing them here, rather than subtracting
        # their squares from the sums, keeps a zero spread at exactly 0 in float32 (the square
        # root would turn a rounding residue of 1e-8 into a sigma of 1e-4).
        centred.diagonal().zero_()
        centred_same = centred * same
        centred_other = centred - centred_same
        squares_p = torch.dot(centred_same.view(-1), centred.view(-1))
        squares_n = torch.dot(centred_other.view(-1), centred_other.view(-1))
        sigma_p = torch.where(n_p > 1, sqrt0(squares_p / (n_p - 1).clamp_min(1)), 0.0)
        sigma_n = torch.where(n_n > 1, sqrt0(squares_n / (n_n - 1).clamp_min(1)), 0.0)
        ctx.save_for_backward(z, same, deviation, centred, n_p, n_n, sigma_p, sigma_n)
        return mu_p, sigma_p, mu_n, sigma_n

    @staticmethod
    def backward(ctx, grad_mu_p, grad_sigma_p, grad_mu_n, grad_sigma_n):
        z, same, deviation, centred, n_p, n_n, sigma_p, sigma_n = ctx.saved_tensors

        def coefficients(grad_mu, grad_sigma, count, sigma):
            # d(loss)/d(value) = a + b (value - mean), times 2 from d(value)/d(gram).
            a = torch.where(count > 0, 2 * grad_mu / count.clamp_min(1), 0.0)
            b = torch.where(
                (count > 1) & (sigma > 0),
                2 * grad_sigma / ((count - 1).clamp_min(1) * sigma.clamp_min(1e-30)),
                0.0,
            )
            return a, b

        a_p, b_p = coefficients(grad_mu_p, grad_sigma_p, n_p, sigma_p)
        a_n, b_n = coefficients(grad_mu_n, grad_sigma_n, n_n, sigma_n)
        grad_values = (centred * (b_p - b_n) + (a_p - a_n)) * same
        grad_values += centred * b_n + a_n
        grad_values.diagonal().zero_()  # the pairs i == j belong to neither set
        grad_gram = grad_values.mul_(deviation)
        # G = z z^T and grad_gram is symmetric: d(loss)/dz = (grad_gram + grad_gram^T) z.
        return 2 * (grad_gram @ z), None
