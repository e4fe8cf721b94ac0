"""`python -m tocsin.faketwilio --port N`: the fake Twilio as its own process."""

import sys

from tocsin.faketwilio.server import main

sys.exit(main())
