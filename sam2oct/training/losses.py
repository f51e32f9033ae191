"""Training losses for the K-class semantic head, in the model's S x S frame.

The classes compete through a softmax, as they do when the function serves (argmax label map,
softmax confidence). Targets are soft (an antialiased resize of the one-hot label map), and a
``valid`` weight leaves out model pixels outside the image (pad-equalize canvases).

- focal: softmax focal loss, mean over valid pixels
- dice, iou: soft Dice and soft Jaccard per class and image, averaged over the classes present
  in that image's target (absent classes are pushed down by the focal term)
- iou_head: MSE between the IoU head's estimate and the real IoU of each class's argmax mask
  (1 when the class is absent from both prediction and target)
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

_EPS = 1.0  # smoothing in pixels: keeps Dice and IoU defined for tiny classes


@dataclass(frozen=True)
class LossWeights:
    focal: float = 20.0
    dice: float = 1.0
    iou: float = 1.0
    iou_head: float = 1.0
    gamma: float = 2.0


def focal_loss(logits, target, valid, gamma: float = 2.0):
    """logits, target [B,K,S,S] (target sums to 1 over K where valid); valid [B,1,S,S]."""
    logp = F.log_softmax(logits, dim=1)
    p = logp.exp()
    per_pixel = -(target * (1 - p).pow(gamma) * logp).sum(dim=1, keepdim=True)
    return (per_pixel * valid).sum() / valid.sum().clamp(min=1.0)


def _overlaps(probs, target, valid):
    inter = (probs * target * valid).sum(dim=(2, 3))
    p_sum = (probs * valid).sum(dim=(2, 3))
    t_sum = (target * valid).sum(dim=(2, 3))
    present = (t_sum >= 0.5).float()
    return inter, p_sum, t_sum, present


def _mean_present(loss, present):
    return (loss * present).sum() / present.sum().clamp(min=1.0)


def dice_loss(probs, target, valid):
    inter, p_sum, t_sum, present = _overlaps(probs, target, valid)
    return _mean_present(1 - (2 * inter + _EPS) / (p_sum + t_sum + _EPS), present)


def soft_iou_loss(probs, target, valid):
    inter, p_sum, t_sum, present = _overlaps(probs, target, valid)
    return _mean_present(1 - (inter + _EPS) / (p_sum + t_sum - inter + _EPS), present)


@torch.no_grad()
def argmax_iou(logits, target, valid) -> torch.Tensor:
    """[B,K] IoU of each class's argmax mask against the target's argmax mask, on valid pixels."""
    k = logits.shape[1]
    keep = valid[:, 0] > 0.5
    pred = F.one_hot(logits.argmax(1), k).permute(0, 3, 1, 2) & keep[:, None]
    true = F.one_hot(target.argmax(1), k).permute(0, 3, 1, 2) & keep[:, None]
    inter = (pred & true).sum(dim=(2, 3)).float()
    union = (pred | true).sum(dim=(2, 3)).float()
    return torch.where(union > 0, inter / union.clamp(min=1.0), torch.ones_like(union))


def total_loss(logits, ious, target, valid, weights: LossWeights = LossWeights()):
    """The training objective and its parts (floats, for the log)."""
    probs = torch.softmax(logits, dim=1)
    parts = {
        "focal": focal_loss(logits, target, valid, weights.gamma),
        "dice": dice_loss(probs, target, valid),
        "iou": soft_iou_loss(probs, target, valid),
        "iou_head": F.mse_loss(ious.float(), argmax_iou(logits, target, valid)),
    }
    total = sum(getattr(weights, name) * value for name, value in parts.items())
    return total, {name: float(value.detach()) for name, value in parts.items()}
