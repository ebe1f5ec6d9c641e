"""LLM backends behind one interface (`Engine.generate`)."""

from thinkwheel.engines.base import Completion, Engine, SamplingParams, as_messages

__all__ = ["Completion", "Engine", "SamplingParams", "as_messages"]
