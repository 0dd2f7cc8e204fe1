"""Scores of a model's answers and the offline ASR judge."""
