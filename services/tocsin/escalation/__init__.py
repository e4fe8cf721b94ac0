"""Escalation: policies and the timer-driven state machine that pages level after level."""
