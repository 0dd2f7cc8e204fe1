"""The command-line tools, each a thin layer over the library."""
