"""Training: teach the model habits the engine relies on (thought bubbles, memory).

Each module here is a `python -m engine train NAME` subcommand: it exposes
``add_arguments(parser)`` and ``run(args) -> int``.
"""
