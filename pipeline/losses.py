"""FROSTER's objective: cross-entropy on video-text logits plus residual feature distillation (paper Eq. 7, Eq. 8).

    L = L_CE + beta * (L_FD^v + L_FD^t)

Terms are returned as a dict (ce, fd_vision, fd_text, total); a term switched off is a zero that is still logged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from froster.pipeline.errors import FrosterError

DISTANCES = ("cosine", "l2")
DISTILL_ON = ("vision", "text", "both")
DISTILL_KINDS = ("none", "fd", "fd-mlp", "rfd")


def video_logits(
    frame_emb: torch.Tensor, class_emb: torch.Tensor, logit_scale: torch.Tensor, renormalize: bool = False
) -> torch.Tensor:
    """Logits ``[B, K]`` of videos ``frame_emb [B, T, D]`` (normalised or not) against classes ``class_emb [K, D]``.

        logits[b, k] = exp(logit_scale) * v_b . c_k / ||c_k||,   v_b = (1/T) sum_t f_{b,t} / ||f_{b,t}||

    The video embedding v_b is the mean over T of the L2-normalised frame embeddings, *not* re-normalised: that is
    exactly the release's computation, which takes per-frame logits ``logit_scale.exp() * f_t @ W.T`` of normalised
    frames and averages them over T (FROSTER ``temporalclip_video_model.py``, release notes section 1), and the mean
    of the per-frame logits is the logit of the mean of the normalised frames. Re-normalising v_b (issue 4's wording,
    ``renormalize=True``) multiplies each video's logits by 1 / ||v_b|| >= 1, a slightly sharper softmax in the CE
    that varies with how much the frames agree; the class ranking of a video is the same either way. The release's
    computation is the default so that training matches the authors' runs.
    """
    frames = F.normalize(frame_emb, dim=-1)  # [B, T, D]
    video = frames.mean(dim=1)  # [B, D]
    if renormalize:
        video = F.normalize(video, dim=-1)
    classes = F.normalize(class_emb, dim=-1)  # [K, D]
    return logit_scale.exp() * video @ classes.t()  # [B, K]


def feature_distance(pred: torch.Tensor, target: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Mean distance over rows of ``pred, target [..., D]``.

    - cosine: mean(1 - cos(pred, target)), the released code's loss (release notes section 1);
    - l2: mean(||pred - target||_2), the Euclidean norm of the difference of the paper's Eq. 7, averaged where Eq. 7
      sums (issue 4: mean reduction in both), so that beta's weight does not grow with the batch size or K.
    """
    # float32 whatever the inputs: stored teacher targets are float16, the student may run under bf16 autocast.
    pred, target = pred.float(), target.float()
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(pred, target, dim=-1)).mean()
    if kind == "l2":
        return torch.linalg.vector_norm(pred - target, dim=-1).mean()
    raise FrosterError(f"unknown distillation distance {kind!r}; known: {', '.join(DISTANCES)}")


def froster_loss(
    video_logits: torch.Tensor,
    labels: torch.Tensor,
    student_frames_norm: torch.Tensor,
    teacher_frames: torch.Tensor,
    student_classes: torch.Tensor,
    teacher_classes: torch.Tensor,
    vision_head: nn.Module,
    text_head: nn.Module,
    beta: float = 2.0,
    distance: str = "cosine",
    distill_on: str = "both",
    distill: str = "rfd",
) -> dict[str, torch.Tensor]:
    """FROSTER's loss terms on one batch (paper Eq. 7 and Eq. 8; release ``train_net.py``).

    Inputs: ``video_logits [B, K]`` (``video_logits(...)``), integer ``labels [B]`` in 0..K-1;
    ``student_frames_norm [B, T, D]`` the student's L2-normalised frame embeddings and ``teacher_frames [B, T, D]``
    the teacher's (normalised) embeddings of the same frames; ``student_classes [K, D]`` the student's class embeddings
    and ``teacher_classes [K, D]`` the teacher's built the same way from the same prompts (``text.class_embeddings``);
    ``vision_head`` h_v and ``text_head`` h_t from ``heads.create_head(distill, ...)``.

        ce        = -(1/B) sum_b log softmax(video_logits[b])[labels[b]]
        fd_vision = (1/(B T)) sum_{b,t} d(h_v(s_{b,t}), t_{b,t})       per frame, as the release
        fd_text   = (1/K) sum_k d(h_t(s_k), t_k)                       per class
        total     = ce + beta * (fd_vision + fd_text)

    with d(x, y) = 1 - cos(x, y) (``distance="cosine"``, the release) or ||x - y||_2 (``"l2"``, the paper's Eq. 7
    with the sum over items replaced by a mean). ``distill_on`` picks which of the two terms is computed (Table 4);
    ``distill="none"`` computes neither (Table 4 A/E). A term not computed is a zero tensor. beta = 2 is the paper's
    A.1 and the release scripts' ``DISTILLATION_RATIO``.
    """
    if distill not in DISTILL_KINDS:
        raise FrosterError(f"unknown distillation {distill!r}; known: {', '.join(DISTILL_KINDS)}")
    if distill_on not in DISTILL_ON:
        raise FrosterError(f"unknown distill_on {distill_on!r}; known: {', '.join(DISTILL_ON)}")
    if distance not in DISTANCES:
        raise FrosterError(f"unknown distillation distance {distance!r}; known: {', '.join(DISTANCES)}")
    ce = F.cross_entropy(video_logits.float(), labels)
    zero = ce.new_zeros(())
    fd_vision, fd_text = zero, zero
    if distill != "none" and distill_on in ("vision", "both"):
        student = vision_head(student_frames_norm)  # [B, T, D]
        fd_vision = feature_distance(student.flatten(0, 1), teacher_frames.flatten(0, 1), distance)  # over B*T frames
    if distill != "none" and distill_on in ("text", "both"):
        fd_text = feature_distance(text_head(student_classes), teacher_classes, distance)  # over K classes
    total = ce + beta * (fd_vision + fd_text)
    return {"ce": ce, "fd_vision": fd_vision, "fd_text": fd_text, "total": total}
