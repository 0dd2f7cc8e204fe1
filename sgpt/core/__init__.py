"""What every stage shares: records, audio, files, errors, devices, safe unpickling,
the embedded default."""
