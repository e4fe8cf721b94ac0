"""The incidents service: services (alert sources), incidents, dedup, timeline, outbox events."""
