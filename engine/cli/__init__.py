"""python -m engine: the command line, a thin layer over Novel.

Every command exits non-zero with a one-line reason on bad input ("error: ..."), and
checks everything it can before it changes anything. A bug prints one line too
("internal error: ..."), with the traceback saved to a file (MNEMOSYNE_DEBUG=1 shows it).

``main.py`` holds the parser and the error handling; each other module one group of
subcommands, each importing what it runs only when chosen (so --help and list run
without torch).
"""
