"""extune.search."""
