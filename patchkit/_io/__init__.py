"""The bottom stage: the one atomic writer, the one sha256 helper (with its cache), the one progress shape, and
what patchkit is willing to read from disk (regular files, links kept inside the model directory, size caps).

Nothing here knows about models or recipes; every other stage builds on it.
"""
