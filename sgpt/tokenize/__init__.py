"""Training data (sgpt-tokenize): SpeechInstruct construction and packing."""
