"""Models: the ViT-DSI encoder-decoder (`vit_dsi`) and prefix-constrained decoding (`decoding`)."""

from vitdsi.models.decoding import IdTrie, atomic_topk, beam_search
from vitdsi.models.vit_dsi import VitDSI, VitDSIConfig, sequence_logprob

__all__ = ["IdTrie", "VitDSI", "VitDSIConfig", "atomic_topk", "beam_search", "sequence_logprob"]
