"""`agile-train` run by path: train and evaluate one configuration.

The command lives in `toolkit/commands/train.py`; this file keeps `python launch/train.py`
(the README's, BUILD.md's and `ray job submit`'s spelling) working once the toolkit is installed.
"""

from toolkit.commands.train import entry

if __name__ == "__main__":
    entry()
