"""One module per command: its ``Config`` (defaults, choices and help, once), ``run(config, reporter) -> Result``."""
