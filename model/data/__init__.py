"""The data contracts: training examples (loading the project's CSV/Parquet/JSONL, Banking77 and
CLINC150; frozen splits by text hash; content digests) and the conversation snapshot the collector
exports (its schema, written and read in one place).

Imports: ``model.core`` only.
"""
