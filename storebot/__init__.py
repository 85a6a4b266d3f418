"""storebot: sells and runs managed NullClaw assistants."""

__version__ = "0.1.0"
