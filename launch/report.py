"""`agile-report` run by path: compare model sizes across a sweep: F1 / ROC-AUC against training-set size, best

The command lives in `toolkit/commands/report.py`; this file keeps `python launch/report.py`
(the README's, BUILD.md's and `ray job submit`'s spelling) working once the toolkit is installed.
"""

from toolkit.commands.report import entry

if __name__ == "__main__":
    entry()
