"""SAM 2's prompt encoder plus a class-tagged dense prompt (a painted label map)."""

import torch
import torch.nn.functional as F
from sam2.modeling.sam.prompt_encoder import PromptEncoder
from sam2.modeling.sam2_utils import LayerNorm2d
from torch import nn

# Painted pixels become soft one-hot probabilities (1-e or e), i.e. logits of about +-6.9;
# this is how the weights were trained, so it must not change.
_ONE_HOT_EPS = 1e-3


class SemanticPromptEncoder(PromptEncoder):
    """Points work as in SAM 2; a K-class label map replaces SAM's single binary mask prompt."""

    def __init__(self, *, num_classes: int, embed_dim: int, mask_in_chans: int, **kwargs):
        super().__init__(embed_dim=embed_dim, mask_in_chans=mask_in_chans, **kwargs)
        self.num_classes = num_classes
        self.class_embeddings = nn.Embedding(num_classes, embed_dim)
        # Same layout as SAM's mask_downscaling (indices 0..6) but with K input channels.
        self.semantic_mask_downscaling = nn.Sequential(
            nn.Conv2d(num_classes, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )

    def class_label_logits(self, labels: torch.Tensor) -> torch.Tensor:
        """[B,H,W] class indices (-1 or out of range = unpainted) -> [B,K,H,W] logits.

        Unpainted pixels get logit 0 on every channel: "no opinion" rather than background.
        """
        k = self.num_classes
        painted = (labels >= 0) & (labels < k)
        one_hot = F.one_hot(labels.clamp(0, k - 1).long(), k).permute(0, 3, 1, 2).float()
        p = one_hot * (1 - 2 * _ONE_HOT_EPS) + _ONE_HOT_EPS
        return torch.log(p / (1 - p)) * painted.unsqueeze(1)

    def embed_class_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """[B,K,h,w] class logits -> dense prompt embedding [B,C,H/16,W/16] of the image size."""
        if tuple(logits.shape[-2:]) != tuple(self.mask_input_size):
            logits = F.interpolate(
                logits, size=self.mask_input_size, mode="bilinear", align_corners=False, antialias=True
            )
        spatial = self.semantic_mask_downscaling(logits)
        # A global "which classes were painted, and how much" vector, added everywhere.
        class_mix = torch.sigmoid(logits).mean(dim=(2, 3)) @ self.class_embeddings.weight
        return spatial + class_mix[:, :, None, None]

    def embed_sparse(self, coords: torch.Tensor | None, labels: torch.Tensor | None, batch: int = 1):
        """Point prompts (model pixel space; labels 1 pos, 0 neg, 2/3 box corners) -> [B,N+1,C]."""
        device = self._get_device()
        if coords is None or coords.shape[1] == 0:
            # SAM 2 stands an empty prompt in for "no points": one padding point at the origin.
            coords = torch.zeros(batch, 1, 2, device=device)
            labels = -torch.ones(batch, 1, dtype=torch.int32, device=device)
        return self._embed_points(coords, labels, pad=True)

    def no_dense_embedding(self, batch: int = 1) -> torch.Tensor:
        h, w = self.image_embedding_size
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, h, w)
