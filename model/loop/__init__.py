"""The closed loop on one machine: the orchestrator that turns the flywheel once with the real steps,
the stand-ins for GitHub and the cluster (a local Git repository, ``flywheel serve`` and
``flywheel collect`` as processes), simulated users and a simulated reviewer, and the HTML report.

``orchestrator`` runs the stages of ``stages.Loop`` in order (``flywheel demo``), handing each what
the ones before it returned (``world``: what setup made, and the traffic seeds); what they did goes
into one typed record (``record``, loop.json). ``plan`` decides the data, ``retraining`` makes models, ``live_traffic``
sends the simulated users of ``traffic`` to the cluster (``traffic_step``: the same users as
``flywheel traffic``); ``report`` renders ``templates/report.html.j2`` with ``charts``.
The steps' flags (``traffic``, ``demo``, ``report``) are in ``args``.

Imports: ``model.deploy``, ``model.train``, ``model.prepare``, ``model.collect``, ``model.evaluate``,
``data_checks``, ``model.registry``, ``model.artifact``, ``model.data``, ``model.core`` (the top layer);
not ``model.serve``: the loop starts ``flywheel serve`` as a process.
"""
