"""Model cards of the converted and the trained checkpoints (`model_card`)."""
