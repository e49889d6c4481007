"""One module per `apm` sub-command; each defines ``register(subparsers)``."""
