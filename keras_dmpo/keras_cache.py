"""Keras' cache directory, where downloads and converted presets live.

Standard library only: the data archives, the data sets and the preset
lookup all read it, and the lookup must stay free of their code.
"""

import os


def keras_cache_dir():
    """The directory Keras' ``get_file`` uses for its downloads.

    ``$KERAS_HOME`` if set, else ``~/.keras``; like Keras, falls back to
    ``/tmp/.keras`` when that directory is not writable.
    """
    if "KERAS_HOME" in os.environ:
        base = os.environ["KERAS_HOME"]
    else:
        home = os.path.expanduser("~")
        if not os.access(home, os.W_OK):
            home = "/tmp"
        base = os.path.join(home, ".keras")
    base = os.path.expanduser(base)
    if os.path.isdir(base) and not os.access(base, os.W_OK):
        base = os.path.join("/tmp", ".keras")
    return base
