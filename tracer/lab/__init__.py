"""The embedded lab: Docker's default bridge network and a TEST-NET "internet" in namespaces.

``Lab(engine, prefix).up()`` builds it, ``.run(scenario)`` makes one experiment's
traffic, ``.down()`` removes everything. ``hoptrace lab ...`` is the CLI.
"""

from __future__ import annotations

from tracer.lab.lab import ENGINES, NODES, Lab, LabStatus, ScenarioResult, default_engine
from tracer.lab.scenarios import SCENARIOS

__all__ = ["ENGINES", "NODES", "SCENARIOS", "Lab", "LabStatus", "ScenarioResult", "default_engine"]
