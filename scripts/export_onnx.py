#!/usr/bin/env python3
"""`setr export-onnx ...` from a checkout: `python scripts/export_onnx.py --help` (see transformers_setr/apps/onnx_export.py)."""

from transformers_setr.apps.onnx_export import main

if __name__ == "__main__":
    raise SystemExit(main())
