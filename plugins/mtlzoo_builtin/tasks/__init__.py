"""Built-in tasks: one family per file."""
