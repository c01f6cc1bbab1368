"""extune.evaluate."""
