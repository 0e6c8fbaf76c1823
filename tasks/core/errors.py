"""The one exception type for errors a user can cause and fix."""




class PruneflowError(Exception):
    """A problem with the user's config, data or model.

    The message names the file, row or field at fault and says what to do; the CLI prints it
    without a traceback. Programming errors stay ordinary exceptions.
    """
