"""Example training jobs that use ``sentinel.train``, shipped with the package.

:mod:`sentinel.examples.gpt` is the real GPT example (``python -m sentinel.examples.gpt``;
``examples/train_gpt.py`` in a checkout runs the same). ``sentinel demo`` trains it.
"""
