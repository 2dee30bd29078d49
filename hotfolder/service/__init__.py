"""The operating system around the daemon: launchd and systemd, the Finder Quick Action, macOS privacy, notifications."""
