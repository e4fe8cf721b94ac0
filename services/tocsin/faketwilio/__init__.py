"""A Twilio-compatible HTTP server for tests and load tests (the only fake in tocsin).

async with create_fake_twilio(ACCOUNT_SID, AUTH_TOKEN) as fake:
    provider = TwilioProvider(ACCOUNT_SID, AUTH_TOKEN, FROM, base_url=fake.base_url)
    ...
    fake.accepted("sms")              # what Twilio would have sent
    await fake.reply_sms(from_=user, body="4a", to=FROM, webhook_url=...)
"""

from tocsin.faketwilio.fake import FakeTwilio, PostedWebhook, RecordedRequest, WebhookReply
from tocsin.faketwilio.server import create_fake_twilio, main, run, serve_asgi

__all__ = [
    "FakeTwilio",
    "PostedWebhook",
    "RecordedRequest",
    "WebhookReply",
    "create_fake_twilio",
    "main",
    "run",
    "serve_asgi",
]
