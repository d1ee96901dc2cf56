"""Sub-commands of the ``magicbokeh`` command line, one module each."""
