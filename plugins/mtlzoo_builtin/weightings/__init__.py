"""Built-in weightings: one family per file."""
