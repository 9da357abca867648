"""Tiny Hugging Face model folders for tests, built from config objects (random weights, nothing downloaded).

Each builder writes one folder with ``save_pretrained`` and returns its path; tests wrap them in
session-scoped fixtures. Seeded, so every run builds the same weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

SENTENCES = [
    "the cat sat on the mat",
    "the dog sat on the log",
    "a cat and a dog ran to the mat",
    "the bird sang on the log and the cat slept",
]
GPT2_VOCAB = 300
GPT2_POSITIONS = 64
BERT_VOCAB = 100
BERT_LABELS = 3
VIT_SIZE = 16


def word_tokenizer():
    """A word-level tokenizer trained on :data:`SENTENCES`, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")


def gpt2_folder(root: Path) -> Path:
    """A 2-layer GPT-2 (vocab 300, 64 positions) with a word-level tokenizer saved beside it."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=GPT2_VOCAB, n_positions=GPT2_POSITIONS,
                        bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(config).save_pretrained(root)
    word_tokenizer().save_pretrained(root)
    return root


def bert_folder(root: Path) -> Path:
    """A 1-layer BERT sequence classifier with 3 labels (vocab 100, 32 positions)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(1)
    config = BertConfig(vocab_size=BERT_VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, num_labels=BERT_LABELS)
    BertForSequenceClassification(config).save_pretrained(root)
    return root


def vit_folder(root: Path) -> Path:
    """A 1-layer ViT classifier for 16x16 RGB images, 10 labels (digits are resized and repeated to fit)."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(2)
    config = ViTConfig(image_size=VIT_SIZE, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=64, num_labels=10)
    ViTForImageClassification(config).save_pretrained(root)
    return root
