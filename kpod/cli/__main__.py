"""``python -m kpod.cli`` (how `kpod run --launch` starts each process)."""

from kpod.cli import main

main()
