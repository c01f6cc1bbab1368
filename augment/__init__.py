"""extune.augment."""
