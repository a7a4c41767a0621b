#!/usr/bin/env python3
"""`setr export-onnx` from a checkout: see `setr export-onnx --help`."""

from transformers_setr.apps.onnx_export import main

if __name__ == "__main__":
    raise SystemExit(main())
