"""The command-line tools, one module each (`agile-train`, `agile-sweep`, `agile-export`,
`agile-report`, `agile-generate`; `python -m toolkit.commands.NAME` too): argument parsing and
printing only, over the library's functions, behind `toolkit.cli.run`'s one error handler."""
