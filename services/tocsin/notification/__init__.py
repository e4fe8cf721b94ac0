"""Notification: contact methods, notification rules, and paging through SMS and voice."""
