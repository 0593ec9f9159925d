"""Data: tokenizers (``tokenizer``), the pre-training pipeline (``pretrain_data``), GLUE readers.

Submodules are imported explicitly (``from electra_fn.data.tokenizer import train_tokenizer``) so
that importing the package stays cheap.
"""
