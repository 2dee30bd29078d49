"""The root's folders as the journal: arrivals (settle), spool (claim, recover, deliver, fail), lock, status, watch."""
