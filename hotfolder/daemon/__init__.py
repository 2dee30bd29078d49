"""The daemon: lifecycle, scan and admit (daemon), the queue, the resident model (provider), one result (produce)."""
