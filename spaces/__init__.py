"""extune.spaces."""
