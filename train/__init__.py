"""extune.train."""
