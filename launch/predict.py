"""`agile-predict` run by path: score a file of texts with a trained classifier.

The command lives in `toolkit/commands/predict.py`; this file keeps `python launch/predict.py`
working once the toolkit is installed.
"""

from toolkit.commands.predict import entry

if __name__ == "__main__":
    entry()
