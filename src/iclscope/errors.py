"""The one exception type iclscope raises for bad input.

It subclasses ValueError so that callers who already catch ValueError keep working. The CLI prints its
message on one line, with no traceback.
"""


class IclscopeError(ValueError):
    """Bad input: the message names what was wrong and, where it can, what to do about it."""
