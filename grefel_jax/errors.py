"""`UserError`: the base of the errors that a user's input causes, not a bug.

A dataset that is not prepared, a workdir another run holds, a checkpoint that does not
exist or fit: each library raises its own subclass, with a message that names the path or
key and says what to do. The command lines report these, and ValueErrors (a bad config
value), as one `ERROR:` line with exit status 2 (`cli.user_errors`); anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """An error in the user's input; its message names what to fix."""
