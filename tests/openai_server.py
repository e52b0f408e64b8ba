"""The loopback OpenAI-compatible server now lives in ``controller.drills.openai_server``
(the offline drills use it as their cloud tier); tests keep importing it from here."""

from controller.drills.openai_server import Behaviour, FakeProvider, start_provider

__all__ = ["Behaviour", "FakeProvider", "start_provider"]
