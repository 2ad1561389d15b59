"""A revision's upgrade as a list of steps, each defined once: what the plan says about it, what it does
online, and the SQL it writes offline.

A step kind is one module here. Each step object gives

- :meth:`Step.facts`: what ``taskdb plan`` prints (what it does, the lock it takes, whether it reads all of
  ``tasks``), from the same data the step runs with;
- :meth:`Step.online`: the work on a live database, in short transactions (``taskdb upgrade``);
- :meth:`Step.offline`: the same work as static SQL that adapts to the database when it runs
  (``taskdb sql``, through :class:`taskdb.offline.OfflineScript`).

A revision is then ``STEPS = (...)`` plus its frozen SQL, and its ``upgrade()`` is :func:`upgrade`. The plan
reads the same ``STEPS``, and the online run logs each step's facts as it starts it: a test holds the two to
the same order.
"""

from taskdb.steps.base import Facts, Online, Step, facts, upgrade

__all__ = ["Facts", "Online", "Step", "facts", "upgrade"]
