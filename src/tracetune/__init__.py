"""tracetune: MCP agent traces to a fine-tuned, evaluated tool-using model, as a Snakemake build."""

__version__ = "0.1.0"
