"""Built-in heads: one family per file."""
