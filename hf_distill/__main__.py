"""`python -m hf_distill ...` is `hf-distill ...` (also under `accelerate launch -m hf_distill train ...`)."""

from hf_distill.cli.main import main

raise SystemExit(main())
