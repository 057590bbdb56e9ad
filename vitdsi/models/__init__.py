"""Models: the shared ViT encoder (`vit_encoder`), the ViT-DSI encoder-decoder (`vit_dsi`),
prefix-constrained decoding (`decoding`), the label-matched baselines' heads (`vit_heads`),
the caption encoders (`text_encoder`) and the models that read captions (`text_models`)."""

from vitdsi.models.decoding import IdTrie, atomic_topk, beam_search
from vitdsi.models.vit_dsi import VitDSI, VitDSIConfig, sequence_logprob
from vitdsi.models.vit_encoder import VitEncoder, VitEncoderConfig

__all__ = [
    "IdTrie",
    "VitDSI",
    "VitDSIConfig",
    "VitEncoder",
    "VitEncoderConfig",
    "atomic_topk",
    "beam_search",
    "sequence_logprob",
]
