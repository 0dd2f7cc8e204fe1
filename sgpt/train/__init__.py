"""Training the LLM (sgpt-train): the recipe and its data."""
