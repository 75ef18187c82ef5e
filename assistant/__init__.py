"""assistant: speech-to-intent for voice assistants, improved with rejection-sampling fine-tuning."""

__version__ = "0.1.0"
