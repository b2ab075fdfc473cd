"""One module per command: parse flags, call the layers below, report with rich."""
