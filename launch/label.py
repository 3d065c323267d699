"""`agile-label` run by path: one round of the agile loop, the texts to label next.

The command lives in `toolkit/commands/label.py`; this file keeps `python launch/label.py`
working once the toolkit is installed.
"""

from toolkit.commands.label import entry

if __name__ == "__main__":
    entry()
