"""The network: registry of architectures, the checkpoint format, and importers of public weights."""
