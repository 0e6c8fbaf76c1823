"""The one exception type for errors a user can cause and fix, and how a library's error is cut
down to fit in one."""

import logging

MESSAGE_LIMIT = 1000  # characters: a user error longer than this is cut in its middle
KEPT_TAIL = 300  # characters kept of a cut message's end, where it says what to do
CAUSE_LIMIT = 300  # characters of a library error's first line quoted in a user error


class PruneflowError(Exception):
    """A problem with the user's config, data or model.

    The message names the file, row or field at fault and says what to do; the CLI prints it
    without a traceback. Programming errors stay ordinary exceptions. A message longer than
    MESSAGE_LIMIT characters is cut in its middle: its start says what is wrong, its end what to do.
    """

    def __init__(self, message: str):
        if len(message) > MESSAGE_LIMIT:
            gap = " [...] "
            message = message[: MESSAGE_LIMIT - KEPT_TAIL - len(gap)] + gap + message[-KEPT_TAIL:]
        super().__init__(message)


def short_cause(error: BaseException) -> str:
    """A library's exception as its class and the first line of its message, cut to CAUSE_LIMIT: a
    Keras error can carry a model's whole serialized config. The whole of it goes to the `pruneflow`
    logger at debug level."""
    logging.getLogger("pruneflow").debug("cause in full", exc_info=error)
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    if len(first) > CAUSE_LIMIT:
        first = first[: CAUSE_LIMIT - 3] + "..."
    return f"{type(error).__name__}: {first}" if first else type(error).__name__
