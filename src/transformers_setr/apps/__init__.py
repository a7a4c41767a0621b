"""People's tools: `setr segment` (images and folders to label maps, overlays and an index page), `setr demo` (a
Gradio app) and `setr export-onnx` (an onnxruntime-ready graph, its session wrapper and the parity checker).

Each command module has `build_parser()` and `main(argv) -> int`.
"""

import argparse

__all__ = ["OneLineArgumentParser"]


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line, `setr <command>: error: ...` with exit status 2, the usage left to `--help`
    (argparse's own error prints the whole usage first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")
