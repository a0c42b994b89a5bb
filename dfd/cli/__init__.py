"""The command-line programs (Hydra apps); ``scripts/*.py`` are thin shims over these.

    python -m dfd.cli.train ...       (scripts/train.py)     train a teacher or a student; sweeps
    python -m dfd.cli.evaluate ...    (scripts/evaluate.py)  evaluate a checkpoint a run wrote
    python -m dfd.cli.reproduce ...   (scripts/reproduce.py) train and collect one paper table
    python -m dfd.cli.collect ...     (scripts/collect.py)   collect a table from finished runs
"""
