"""`agile-export` run by path: export a trained classifier as a keras-hub preset or as LoRA adapter files.

The command lives in `toolkit/commands/export.py`; this file keeps `python launch/export.py`
(the README's, BUILD.md's and `ray job submit`'s spelling) working once the toolkit is installed.
"""

from toolkit.commands.export import entry

if __name__ == "__main__":
    entry()
