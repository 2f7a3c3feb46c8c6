"""Data tests: loading and its formats, personal-data redaction, prepare and the review queue, the label
check, the Great Expectations suites, drift. They need no server and no training (the tiny random BERT
or the bundled MiniLM as an encoder at most); with the code tests they are `make test-fast`. The PII
evaluation sets and their generators live here too (``pii_eval.jsonl``, ``make_pii_eval.py``)."""
