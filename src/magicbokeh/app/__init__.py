"""The web app (``magicbokeh app``): click a photo to focus, drag the aperture, render.

:mod:`magicbokeh.app.session` does the work (open, preview, render, save) without any web
framework; :mod:`magicbokeh.app.ui` is the Gradio page over it (needs the ``app`` extra).
"""
