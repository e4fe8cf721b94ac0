"""The web console, served by the gateway (see console/app.py)."""
