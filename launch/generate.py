"""`agile-generate` run by path: print a greedy continuation: the first check that a model loaded correctly.

The command lives in `toolkit/commands/generate.py`; this file keeps `python launch/generate.py`
(the README's, BUILD.md's and `ray job submit`'s spelling) working once the toolkit is installed.
"""

from toolkit.commands.generate import entry

if __name__ == "__main__":
    entry()
