"""Dataset builders and converters that write datalists (DESIGN §2)."""
