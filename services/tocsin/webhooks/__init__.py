"""Outgoing webhook subscriptions and stakeholder status updates (served by the
notification process; see delivery.py for the guarantees)."""
