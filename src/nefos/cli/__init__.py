"""The `nefos` command line: Typer + Rich, talking to Nefos only through the SDK."""
