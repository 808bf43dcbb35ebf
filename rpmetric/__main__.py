"""``python -m rpmetric`` (also what ``torchrun -m rpmetric`` runs)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
