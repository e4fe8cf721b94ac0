"""Identity: local passwords, personal tokens, API keys and the audit log's reader.

Served by the scheduling process (the users are scheduling's); credentials are checked by
every service through runtime/auth.py.
"""
