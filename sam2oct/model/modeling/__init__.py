"""The SAM2-OCT network: SAM 2 with one mask token and head per retinal layer class."""

from sam2oct.model.modeling.semantic_mask_decoder import SemanticMaskDecoder
from sam2oct.model.modeling.semantic_prompt_encoder import SemanticPromptEncoder
from sam2oct.model.modeling.semantic_sam2 import SemanticSAM2

__all__ = ["SemanticMaskDecoder", "SemanticPromptEncoder", "SemanticSAM2"]
