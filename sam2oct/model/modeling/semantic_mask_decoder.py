"""SAM 2's mask decoder with K mask tokens and heads, all predicted at once (one per class)."""

from sam2.modeling.sam.mask_decoder import MaskDecoder
from torch import nn


class SemanticMaskDecoder(MaskDecoder):
    """Token i predicts the logits of class i; the IoU head scores all K classes.

    SAM's multimask machinery (K = 1 + num_multimask_outputs tokens) gives exactly the modules
    and state-dict names the released weights use; only the output selection differs.
    """

    def __init__(self, *, num_classes: int, transformer_dim: int, **kwargs):
        super().__init__(
            transformer_dim=transformer_dim,
            num_multimask_outputs=num_classes - 1,
            pred_obj_scores=False,
            pred_obj_scores_mlp=False,
            **kwargs,
        )
        self.num_classes = num_classes
        # Present in the released checkpoints but never used by their forward pass; kept so
        # that the state dict matches key for key.
        self.upscale_residual_proj = nn.Conv2d(transformer_dim // 8, transformer_dim // 8, 1)
        self.upscale_post_add_proj = nn.Conv2d(transformer_dim // 8, transformer_dim // 8, 1)

    def forward(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
                high_res_features=None):
        """Returns low-res logits [B,K,4h,4w] and per-class IoU estimates [B,K]."""
        masks, iou_pred, _, _ = self.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse_prompt_embeddings,
            dense_prompt_embeddings=dense_prompt_embeddings,
            repeat_image=False,
            high_res_features=high_res_features,
        )
        return masks, iou_pred
