"""The HTTP edge: health, alert sources, Twilio webhooks and calendar feeds."""
