"""The closed loop on one machine: the orchestrator that turns the flywheel once with the real steps,
the stand-ins for GitHub and the cluster (a local Git repository, ``flywheel serve`` and
``flywheel collect`` as processes), simulated users and a simulated reviewer, and the HTML report.

Imports: every other package (the top layer).
"""
