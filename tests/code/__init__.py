"""Code tests: the CLI and its wiring, the config, the layout and import contract, the workflows and
manifests, the gate, canary analysis and metrics as tables of cases, the loop's report and parts.
They need no server, no database and no training (a system tool such as promtool or actionlint at
most); with the data tests they are `make test-fast`."""
