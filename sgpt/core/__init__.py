"""What every stage shares: records, audio, files and their format versions, errors,
devices, safe unpickling, the embedded default."""
