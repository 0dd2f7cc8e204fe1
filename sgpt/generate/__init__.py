"""Talking to a SpeechGPT model (sgpt-generate)."""
