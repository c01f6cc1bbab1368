"""extune.models."""
