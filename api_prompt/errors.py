"""Exceptions raised by api-prompt.

Every error a user can cause derives from :class:`APIPromptError`, so the command line can turn
them into one clear line and programs can catch them in one place.

Messages say what was wrong and what to pass instead, in Python's words (``model='local-dir:…'``,
``image_root=FOLDER``): that is how a caller of the library reads them. The command line says the
same advice in its own words (``--model local-dir:…``, ``--image-root FOLDER``) by rewriting each
``name=value`` whose ``name`` is one of the running command's options
(:func:`api_prompt.cli.common.for_command_line`), so a message is written once, here in Python.
"""


class APIPromptError(Exception):
    """Base class of every error api-prompt raises on purpose."""


class ConfigError(APIPromptError, ValueError):
    """An option has a value the method cannot use (even kernel size, unknown preset, ...)."""


class ImageLoadError(APIPromptError, ValueError):
    """An image could not be read: missing, not an image, corrupt, truncated or too large."""


class ModelLoadError(APIPromptError, RuntimeError):
    """Model weights could not be found or loaded (offline, wrong name, unsupported model)."""


class UnsupportedModelError(ModelLoadError):
    """The model loads, but its architecture is not one this backend can attribute."""


class TargetError(APIPromptError, RuntimeError):
    """A target model failed to answer (HTTP error, refused request, timeout, ...).

    ``status`` holds the HTTP status code when there is one.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
