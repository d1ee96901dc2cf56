"""Evaluation: benchmark protocols, reports and the ``magicbokeh eval`` command."""
