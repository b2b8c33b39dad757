"""Rows to model inputs: image files to pixels (allowlisted formats, bomb checks, torchvision's transforms),
the tokenizer, and the decode pool with its worker processes."""
