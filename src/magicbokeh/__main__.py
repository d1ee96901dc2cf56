"""``python -m magicbokeh`` (also ``accelerate launch -m magicbokeh``): the command line."""

import sys

from magicbokeh.cli import main

sys.exit(main())
