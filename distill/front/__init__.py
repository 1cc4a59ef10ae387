"""The torch-free front: the command line (cli, app and one module per command group), the options every
run takes (config), their ranges (options) and every model name (names). All of it is checked before torch
is imported, so a typo answers at once; nothing below the command line imports it (tests/layout)."""
