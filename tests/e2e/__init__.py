"""End-to-end tests: jobs run as a user runs them, on a cluster started with ``ray start``."""
