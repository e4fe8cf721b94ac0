"""The history service: the incident archive in SQL, search, similar incidents, reports."""
