"""Built-in strategies: one family per file."""
