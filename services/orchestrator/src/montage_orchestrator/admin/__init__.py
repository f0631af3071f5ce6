"""The operator console's API (``/api/v1/admin/*``), forwarded by the gateway to admins only.

One module per thing it holds, each reusing the owner's code rather than copying it (the bodies
are the Structs of ``montage_contracts.api``, answered by :func:`montage_orchestrator.http.respond`;
job ids are read by :func:`~montage_orchestrator.http.job_uuid`; every change goes through
:mod:`montage_orchestrator.transitions`):

- :mod:`.access`: who may call it (the gateway's internal credential, a user id and
  ``X-Montage-Role: admin``), the stream names and entry ids of its paths;
- :mod:`.queues`: every stage's stream, group, consumers and workers, throughput and p95;
- :mod:`.dead_letters`: list, retry (re-dispatch through the job's state machine), delete;
- :mod:`.jobs`: search, one job's whole story, cancel (the owner's cancel transaction);
- :mod:`.webhooks`: a job's webhook deliveries, resend one;
- :mod:`.actions`: the action log, written in the transaction of each action;
- :mod:`.routes`: the handlers by operation id.

The Nexus jobs' page is ragnarok-proxy's (``montage_ragnarok.admin``): it owns that table.
"""

from montage_orchestrator.admin.actions import record_action
from montage_orchestrator.admin.routes import handlers

__all__ = ["handlers", "record_action"]
