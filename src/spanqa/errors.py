"""Errors shared by layers that must not import each other (documents are read in `data`, index folders are laid
out in `retrieval`, and each reports the other's problems)."""


class CollectionError(ValueError):
    """A document or an index that cannot be used; the message names the file and the fix."""
