"""`bench` subcommands, one small module each; bench.cli registers them on the typer app."""
