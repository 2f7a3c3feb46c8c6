"""The data contracts: training examples (loading the project's CSV/Parquet/JSONL, Banking77,
CLINC150 and SNIPS; their entity spans, ``entities``; frozen splits by text hash; content
digests), the conversation snapshot the collector exports (its schema, written and read in one
place), and the one reader of the table and JSON files both come in (``readers``).

Imports: ``model.core`` only.
"""
