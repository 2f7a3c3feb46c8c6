"""Shared plumbing every stage stands on: typed configuration (``config``), the one error type
(``errors``), the step contract (``steps``: a row of the step table, the typed result a step
returns) and the command line made from it (``command_line``, ``flags``), step reports (``reports``:
where a typed result becomes JSON), progress bars that draw on a terminal only (``progress``), and
the single implementation of each piece of plumbing the stages share: running git, writing a file
atomically, supervising a child process, an async batcher, HTTP request guards, and kserve imported
without its command-line parsing.

Imports: nothing else from this project (the bottom layer of the import contract in pyproject.toml).
"""
