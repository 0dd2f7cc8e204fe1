"""What tokenize, train and generate share: the vocabulary, prompts, answers, model
directories."""
