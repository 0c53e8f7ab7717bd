"""The ``cxr`` command line: the top layer. One module per command, each with its own parser
(``cxr COMMAND --help``); :mod:`cli.main` lists them and turns every :class:`cxr.errors.CxrError` into one line."""
