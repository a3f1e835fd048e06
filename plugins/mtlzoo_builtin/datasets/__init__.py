"""Built-in datasets: one family per file."""
