"""The exceptions storebot raises on purpose; each message is fit to show a person.

    StorebotError
    ├── SettingsError           a setting is missing, malformed or a placeholder
    ├── TokenError              the customer's Telegram token cannot be used
    │   ├── TokenFormatError        not <digits>:<35 url-safe chars>
    │   ├── TokenRejected           getMe says it is wrong or revoked
    │   └── TokenAlreadyHosted      another bot here uses it
    ├── TelegramUnavailable     the Bot API did not answer (retry later)
    ├── BotNotFound             no bot with that id
    ├── InvalidTransition       the bot's state does not allow that action
    │   └── StateChanged            another process changed it meanwhile
    ├── DeployInProgress        someone is deploying this bot right now
    └── EngineError             the container engine failed
        ├── DockerUnavailable       the daemon cannot be reached
        ├── ImageMissing            NULLCLAW_IMAGE is not on the host
        └── HealthTimeout           the container never answered /health

Callers catch `StorebotError` at the edge (CLI, chat handlers) and show `str(exc)`.
"""


class StorebotError(Exception):
    """Base of every error whose message is meant for a person."""


class SettingsError(StorebotError):
    pass


class TokenError(StorebotError):
    pass


class TokenFormatError(TokenError):
    pass


class TokenRejected(TokenError):
    pass


class TokenAlreadyHosted(TokenError):
    pass


class TelegramUnavailable(StorebotError):
    pass


class BotNotFound(StorebotError):
    pass


class InvalidTransition(StorebotError):
    pass


class StateChanged(InvalidTransition):
    pass


class DeployInProgress(StorebotError):
    pass


class EngineError(StorebotError):
    pass


class DockerUnavailable(EngineError):
    pass


class ImageMissing(EngineError):
    pass


class HealthTimeout(EngineError):
    pass
