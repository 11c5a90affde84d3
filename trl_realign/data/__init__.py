from .tokenizer import build_char_tokenizer


__all__ = ["build_char_tokenizer"]
