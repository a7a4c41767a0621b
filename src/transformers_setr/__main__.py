"""`python -m transformers_setr COMMAND ...`: the `setr` command (also under `accelerate launch -m`)."""

import sys

from .cli import main

sys.exit(main())
