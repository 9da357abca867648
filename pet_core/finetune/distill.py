"""Knowledge distillation loss (Hinton et al. 2015): soft teacher targets plus hard labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pet_core.errors import PetError


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      temperature: float, alpha: float) -> torch.Tensor:
    """``alpha·T²·KL(p_teacher ‖ p_student) + (1 - alpha)·CE(student, labels)``, a scalar.

    Both distributions are softened by T; the KL is averaged over the batch. The soft term is
    multiplied by T² because its gradients shrink as 1/T², so the mix keeps its balance when T
    changes. The teacher is detached: no gradient flows into it.

    >>> s, t = torch.randn(8, 10), torch.randn(8, 10)
    >>> distillation_loss(s, t, torch.randint(0, 10, (8,)), temperature=4.0, alpha=0.7).shape
    torch.Size([])
    """
    if not temperature > 0:
        raise PetError(f"distillation: temperature = {temperature} must be > 0")
    if not 0.0 <= alpha <= 1.0:
        raise PetError(f"distillation: alpha = {alpha} must be in [0, 1]")
    t = temperature
    # (batch, classes) log-probabilities; log_softmax on both sides avoids log(0) in the KL
    log_p_student = F.log_softmax(student_logits / t, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / t, dim=1)
    soft = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
    hard = F.cross_entropy(student_logits, labels)
    return alpha * t * t * soft + (1.0 - alpha) * hard
