"""`agile-sweep` run by path: run a Ray Tune sweep: many training runs from one sweep file, early-stopped,

The command lives in `toolkit/commands/sweep.py`; this file keeps `python launch/sweep.py`
(the README's, BUILD.md's and `ray job submit`'s spelling) working once the toolkit is installed.
"""

from toolkit.commands.sweep import entry

if __name__ == "__main__":
    entry()
