"""sgpt: SpeechGPT as a set of small Unix tools."""

__version__ = "0.2.0"
