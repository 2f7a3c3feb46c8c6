"""The whole loop: `flywheel demo`'s orchestrator on a tiny configuration (drift found, retrained,
canary promoted; and a worse canary rolled back), and logged calls becoming a training set end to end."""
