"""`agile-plan` run by path: a run's memory per device before running it.

The command lives in `toolkit/commands/plan.py`; this file keeps `python launch/plan.py`
working once the toolkit is installed.
"""

from toolkit.commands.plan import entry

if __name__ == "__main__":
    entry()
