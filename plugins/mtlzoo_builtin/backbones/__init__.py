"""Built-in backbones: one family per file."""
