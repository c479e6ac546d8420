"""Text: the vocabulary and the PTB tokenizer."""
