"""The management bot: aiogram routers, texts and keyboards (no business rules here)."""
