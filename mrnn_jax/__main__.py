"""``python -m mrnn_jax`` is the ``mrnn`` command."""

from mrnn_jax.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
