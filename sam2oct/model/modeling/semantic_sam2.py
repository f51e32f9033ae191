"""SAM2Base with the semantic heads: encode an image once, then decode all classes per prompt."""

from dataclasses import dataclass

import torch
from sam2.modeling.sam2_base import SAM2Base
from sam2.modeling.sam.transformer import TwoWayTransformer

from sam2oct.model.modeling.semantic_mask_decoder import SemanticMaskDecoder
from sam2oct.model.modeling.semantic_prompt_encoder import SemanticPromptEncoder

# Settings that make SAM2Base a single-image semantic model; the released weights were
# trained with them, whatever the base config file says.
SEMANTIC_OVERRIDES = {
    "num_maskmem": 0,
    "pred_obj_scores": False,
    "pred_obj_scores_mlp": False,
    "fixed_no_obj_ptr": False,
    "use_mask_input_as_output_without_sam": False,
    "multimask_output_in_sam": False,
}


@dataclass
class ImageFeatures:
    """What the expensive image encoder produces; everything a prompt decode needs."""

    image_embed: torch.Tensor  # [1, C, H/16, W/16], no_mem_embed already added
    high_res_feats: list  # [[1, C/8, H/4, W/4], [1, C/4, H/8, W/8]]


class SemanticSAM2(SAM2Base):
    def __init__(self, *args, num_classes: int, **kwargs):
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2 (background + one layer), got {num_classes}")
        self.num_classes = num_classes  # read by _build_sam_heads during SAM2Base.__init__
        super().__init__(*args, **kwargs)

    def _build_sam_heads(self):
        super()._build_sam_heads()  # keeps obj_ptr_proj etc., which the checkpoints carry
        dim = self.sam_prompt_embed_dim
        size = self.sam_image_embedding_size
        self.sam_prompt_encoder = SemanticPromptEncoder(
            num_classes=self.num_classes,
            embed_dim=dim,
            image_embedding_size=(size, size),
            input_image_size=(self.image_size, self.image_size),
            mask_in_chans=16,
        )
        self.sam_mask_decoder = SemanticMaskDecoder(
            num_classes=self.num_classes,
            transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=2048, num_heads=8),
            transformer_dim=dim,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
            use_high_res_features=self.use_high_res_features_in_sam,
            iou_prediction_use_sigmoid=self.iou_prediction_use_sigmoid,
        )

    @property
    def mask_input_size(self) -> tuple:
        return tuple(self.sam_prompt_encoder.mask_input_size)

    def encode_image(self, image: torch.Tensor) -> ImageFeatures:
        """[1,3,S,S] normalised image -> cached-able features (trunk, FPN, no-memory embedding)."""
        backbone_out = self.forward_image(image)
        _, vision_feats, _, feat_sizes = self._prepare_backbone_features(backbone_out)
        # A single image has no memory: the model was trained with no_mem_embed added instead.
        vision_feats[-1] = vision_feats[-1] + self.no_mem_embed
        b = image.shape[0]
        maps = [f.permute(1, 2, 0).reshape(b, -1, h, w) for f, (h, w) in zip(vision_feats, feat_sizes)]
        return ImageFeatures(image_embed=maps[-1], high_res_feats=maps[:-1])

    def decode(self, features: ImageFeatures, point_coords=None, point_labels=None, dense_logits=None):
        """Prompts in model pixel space -> (low-res logits [B,K,h,w], IoU estimates [B,K]).

        point_coords [B,N,2] / point_labels [B,N] (1 pos, 0 neg, 2 and 3 box corners);
        dense_logits [B,K,h,w] class logits (see SemanticPromptEncoder.class_label_logits).
        """
        pe = self.sam_prompt_encoder
        b = features.image_embed.shape[0]
        sparse = pe.embed_sparse(point_coords, point_labels, batch=b)
        dense = pe.no_dense_embedding(b) if dense_logits is None else pe.embed_class_logits(dense_logits)
        return self.sam_mask_decoder(
            image_embeddings=features.image_embed,
            image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            high_res_features=features.high_res_feats,
        )
