"""A labelled privacy-routing corpus in two parts: ``tuning`` (for detector work) and
``heldout`` (for measuring it), split by template and by value pool.

``python -m benchmarks.privacy_corpus.build`` writes ``tests/data/sensitivity_eval/
tuning.jsonl`` and ``heldout.jsonl``; ``benchmarks.eval_privacy`` measures a detector on them.
"""
