"""The fleet file: its model and schema, loading with positions, checks, compile, diff."""
